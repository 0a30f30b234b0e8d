"""Read a corpus in any supported format as a stream of validated trajectory rows.

`open_corpus(inputs)` lists and pre-flights every file (it exists, it can be read,
its format is known and its required columns are there) before any row is read,
so a bad file fails the job in one line before anything is written. `iter_batches`
then streams batches of valid rows and error rows; memory stays flat in the size of
any one file (Parquet row groups, JSONL lines and JSON arrays are all read
incrementally). The one piece of corpus-wide state is the set of ids already seen:
a duplicate id keeps its first occurrence by (file order, row order).

A bad row never takes down its file: a JSONL line that is not UTF-8 or not JSON, a row nested
deeper than `Limits.max_depth` or larger than `Limits.max_row_bytes` (both checked on the bytes,
before the row is parsed into Python objects) is an error row with its reason. JSON arrays are cut
into rows by a byte scanner (`iter_json_array`), so each row is parsed alone: `NaN` (what Python's
`json.dump` writes) is read as Python reads it, and a bad row is one error row.

The output directory of a verb is accepted as the input of the next (`verb_output_part`): `ann`
means `ann/annotations`, a filter's `out` means `out/selected`, and `errors/` is never read as data.
"""

from __future__ import annotations

import glob
import json
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actprm.errors import UserError
from actprm.io.filesystems import (
    Location,
    file_name,
    is_uri,
    list_uri,
    open_binary,
    open_random_access,
)
from actprm.io.formats import (
    FORMATS,
    MapContext,
    content_id,
    detect_format,
    missing_columns,
    to_trajectory,
)
from actprm.schemas import Limits, RowError, check_trajectory, error_row

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
JSON_SUFFIXES = (".json", ".json.gz")
DATA_SUFFIXES = PARQUET_SUFFIXES + JSONL_SUFFIXES + JSON_SUFFIXES


def _has_suffix(path: Location, suffixes: tuple[str, ...]) -> bool:
    return file_name(path).lower().endswith(suffixes)


#: The tables a verb writes under its --output, in the order a next verb takes them: a directory
#: holding one of these is read as the first it holds, unless it also holds data files elsewhere.
VERB_TABLES = ("selected", "annotations", "valid", "scored", "labelled")
#: Files a verb writes beside its tables (JSON, but not rows).
VERB_FILES = ("summary.json", "estimate.json", "judge_check.json", "metrics.json")


def verb_output_part(directory: Path) -> Path:
    """The table of a verb's output directory that the next verb reads, or `directory` itself.

    `annotate`'s `ann` -> `ann/annotations`, `validate`'s `out` -> `out/valid`, `filter`'s `out` ->
    `out/selected`, `score`'s `out` -> `out/scored`; `errors/` is never read as rows. What else a verb
    writes there (summary.json, a plot, the judge's cache) is no data file. A directory with data files
    anywhere else (a user's own folder that happens to have a `valid/`) is read as it is.
    """
    try:
        entries = [p for p in directory.iterdir() if not p.name.startswith((".", "_"))]
    except OSError:
        return directory
    tables = [t for t in VERB_TABLES if (directory / t).is_dir()]
    if not tables:
        return directory
    for entry in entries:
        if entry.name in VERB_TABLES or entry.name in VERB_FILES or entry.name == "errors":
            continue
        if entry.is_file() and _has_suffix(entry, DATA_SUFFIXES):
            return directory
        if entry.is_dir() and any(p.is_file() and _has_suffix(p, DATA_SUFFIXES) for p in entry.rglob("*")):
            return directory
    return directory / tables[0]


def list_files(inputs: list[str | os.PathLike]) -> list[Location]:
    """Files named by paths, directories (searched recursively) and globs, in a stable order.

    Local files come back as Paths; `scheme://` inputs (s3://, gs://, hdfs://, ...: any filesystem
    pyarrow supports, see actprm.io.filesystems) as URI strings of the same form. A verb's output
    directory stands for the table the next verb reads (`verb_output_part`); a directory without any
    data file is a user error.
    """
    files: list[Location] = []
    for item in inputs:
        text = str(item)
        candidates: list[Location]
        if is_uri(text):
            candidates, kind = list_uri(text)
            if kind == "pattern" and not candidates:
                raise UserError(f"{text}: no file matches this pattern")
            if kind == "directory":
                candidates = [u for u in candidates if _has_suffix(u, DATA_SUFFIXES)]
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise UserError(f"{text}: no file matches this pattern")
            candidates = [p for p in matches if p.is_file()]
        else:
            path = Path(text)
            if not path.exists():
                raise UserError(f"{text}: no such file or directory")
            if path.is_dir():
                path = verb_output_part(path)
                candidates = sorted(
                    p for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
                )
                candidates = [p for p in candidates if _has_suffix(p, DATA_SUFFIXES)]
                if not candidates:
                    raise UserError(f"no rows in {text}: no data file ({', '.join(DATA_SUFFIXES)}) in this directory")
            else:
                candidates = [path]
        for path in candidates:
            if not _has_suffix(path, DATA_SUFFIXES):
                raise UserError(
                    f"{path}: unsupported file type; expected one of {', '.join(DATA_SUFFIXES)}"
                )
            if path not in files:
                files.append(path)
    return files


@dataclass
class SourceFile:
    """One input file after pre-flight."""

    path: Location  # a local Path or a URI string (actprm.io.filesystems)
    kind: str  # parquet | jsonl | json-array
    fmt: str
    has_ids: bool
    n_rows: int | None  # known up front for Parquet only

    @property
    def name(self) -> str:
        return file_name(self.path)


def _sniff_json(path: Location) -> str:
    with open_binary(path) as f:
        first = True
        while True:
            chunk = f.read(4096)
            if not chunk:
                return "empty"
            if first and chunk.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                chunk = chunk[3:]
            first = False
            stripped = chunk.lstrip()
            if stripped:
                return {ord("["): "json-array", ord("{"): "jsonl"}.get(stripped[0], "unknown")


#: A JSONL file whose first line is not JSON is parsed whole (up to this size) to tell a pretty-printed
#: JSON value, which is a file error, from a JSONL file with a bad first line.
WHOLE_FILE_CHECK_BYTES = 16 * 2**20


def _whole_json(path: Location) -> bool:
    """True if the file (not too large) is one JSON value written over several lines."""
    with open_binary(path) as f:
        data = f.read(WHOLE_FILE_CHECK_BYTES + 1)
    if len(data) > WHOLE_FILE_CHECK_BYTES or deeper_than(data, 512):
        return False
    try:
        json.loads(data.decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return False
    return True


def _first_record(path: Location, kind: str, limits: Limits) -> dict[str, Any] | None | str:
    """The first JSON object of a JSONL file or JSON array, for format detection ("empty": an empty array)."""
    if kind == "jsonl":
        with open_binary(path) as f:
            first_line = True
            for _, record, _ in _jsonl_records(f, limits):
                if first_line and isinstance(record, BadRecord) and _whole_json(path):
                    raise UserError(f"{path}: one JSON value written over several lines (a pretty-printed JSON "
                                    "object?), not JSON Lines: expected one row per line, or a JSON array of rows")
                first_line = False
                if isinstance(record, dict):
                    return record
        if first_line:  # blank lines only
            return "empty"
        raise UserError(f"{path}: no line is a JSON object: not JSON Lines (expected one JSON object per line)")
    with open_binary(path) as f:
        for _, record, _ in _array_records(f, limits):
            return record if isinstance(record, dict) else None
    return "empty"


def inspect_file(path: Location, fmt: str = "auto", limits: Limits = Limits()) -> SourceFile:
    """Pre-flight one file; raises UserError naming the file and the problem."""
    if fmt != "auto" and fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    if isinstance(path, Path) and not os.access(path, os.R_OK):
        raise UserError(f"{path}: cannot be read (permission denied)")
    n_rows = None
    try:
        if _has_suffix(path, PARQUET_SUFFIXES):
            kind = "parquet"
            meta = pq.ParquetFile(open_random_access(path))
            columns = meta.schema_arrow.names
            n_rows = meta.metadata.num_rows
            for g in range(meta.metadata.num_row_groups):
                group = meta.metadata.row_group(g)
                for c in range(group.num_columns):
                    chunk = group.column(c)
                    if chunk.total_uncompressed_size > limits.max_chunk_bytes:
                        raise UserError(
                            f"{path}: row group {g}, column {chunk.path_in_schema!r}: "
                            f"{chunk.total_uncompressed_size / 2**20:,.0f} MiB uncompressed; at most "
                            f"{limits.max_chunk_bytes / 2**20:,.0f} MiB per column chunk (write smaller row groups)")
            twice = sorted({c for c in columns if columns.count(c) > 1})
            if twice:  # a reader would keep one of them silently
                raise UserError(f"{path}: column {', '.join(repr(c) for c in twice)} appears more than once")
        else:
            kind = "jsonl" if _has_suffix(path, JSONL_SUFFIXES) else _sniff_json(path)
            if kind == "empty":
                return SourceFile(path, "jsonl", fmt if fmt != "auto" else "canonical", False, 0)
            if kind == "unknown":
                raise UserError(f"{path}: not JSON (expected a JSON array or one JSON object per line)")
            first = _first_record(path, kind, limits)
            if first == "empty":
                return SourceFile(path, kind, fmt if fmt != "auto" else "canonical", False, 0)
            if not isinstance(first, dict):  # an empty array, or one whose first element is not an object
                return SourceFile(path, kind, fmt if fmt != "auto" else "canonical", False, None)
            columns = list(first)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise UserError(f"{path}: cannot be read as {_kind_name(path)} ({_short(exc)})") from None

    if fmt == "auto":
        fmt = detect_format(columns)
        if fmt is None:
            raise UserError(
                f"{path}: cannot tell the format from its columns ({', '.join(columns) or 'none'}); "
                f"pass --format, one of {', '.join(FORMATS)}"
            )
    missing = missing_columns(fmt, columns)
    if missing:
        raise UserError(f"{path}: missing required column {', '.join(repr(m) for m in missing)} for format {fmt}")
    return SourceFile(path, kind, fmt, "id" in columns, n_rows)


def _kind_name(path: Location) -> str:
    return "Parquet" if _has_suffix(path, PARQUET_SUFFIXES) else "JSON"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def open_corpus(inputs: list[str | os.PathLike], fmt: str = "auto", limits: Limits = Limits()) -> list[SourceFile]:
    """List and pre-flight every input file; a corpus with no file, or only empty files, is a user error."""
    sources = [inspect_file(path, fmt, limits) for path in list_files(inputs)]
    check_not_empty(sources, inputs)
    return sources


def check_not_empty(sources: list[SourceFile], inputs: list[str | os.PathLike]) -> None:
    """A UserError "no rows in ..." when no file holds a row (as far as pre-flight can tell)."""
    if all(s.n_rows == 0 for s in sources):
        named = ", ".join(str(i) for i in inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        raise UserError(f"no rows in {named or 'the input'}: "
                        + ("no data file" if not sources else f"{len(sources)} empty file(s)"))


def known_rows(sources: list[SourceFile]) -> int | None:
    """Rows in the corpus when every file says up front (Parquet), else None: a progress bar's total."""
    counts = [s.n_rows for s in sources]
    return sum(counts) if all(n is not None for n in counts) else None


# ------------------------------------------------------------------- raw records


@dataclass(frozen=True)
class BadRecord:
    """A row that could not be parsed into a record: why, and its text (for the errors table)."""

    kind: str
    detail: str
    text: str


# a quote, a comma, or a run of opening / closing brackets (a run is one step: 200,000 `[` cost one match)
_STRUCT = re.compile(rb'"|,|[\[{](?:\s*[\[{])*|[\]}](?:\s*[\]}])*')
_STRING_BODY = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
_OPEN, _CLOSE, _QUOTE, _COMMA = ord("["), ord("]"), ord('"'), ord(",")
_OPEN_OBJ, _CLOSE_OBJ = ord("{"), ord("}")
READ_CHUNK = 1 << 20


def deeper_than(data: bytes, cap: int) -> bool:
    """True if brackets in JSON text (outside strings) nest deeper than `cap` (stops scanning there)."""
    if data.count(b"[") + data.count(b"{") <= cap:
        return False
    depth = i = 0
    n = len(data)
    while i < n:
        m = _STRUCT.search(data, i)
        if m is None:
            break
        c, i = data[m.start()], m.end()
        if c == _QUOTE:
            i = _STRING_BODY.match(data, i).end() + 1
        elif c == _OPEN or c == _OPEN_OBJ:
            depth += _brackets(m.group())
            if depth > cap:
                return True
        elif c == _CLOSE or c == _CLOSE_OBJ:
            depth -= _brackets(m.group())
    return False


def _brackets(run: bytes) -> int:
    """Brackets in a run matched by _STRUCT (whitespace may separate them)."""
    return len(run) if len(run) == 1 or not any(ch in run for ch in b" \t\r\n") else len(run.translate(None, b" \t\r\n"))


def _text(data: bytes, limit: int = 100_000) -> str:
    """Bytes as text for an error row (invalid UTF-8 replaced, long text cut)."""
    text = data[:limit].decode("utf-8", errors="replace")
    return text if len(data) <= limit else text + f"... [{len(data) - limit} more bytes]"


def _nests_deeper(value: Any, cap: int) -> bool:
    """True if a parsed value nests containers deeper than `cap` (walks containers only: cheap for rows)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > cap:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def parse_row(data: bytes, limits: Limits) -> Any:
    """One row's JSON text -> a Python value, or a BadRecord saying why not.

    Nothing deep is built: json's decoder stops at the interpreter's recursion limit (a few hundred
    KB of memory at most, whatever the nesting), and a row under it but deeper than
    `limits.max_depth` is refused after the (cheap, containers-only) walk.
    """
    if len(data) > limits.max_row_bytes:
        return BadRecord("too large", f"the row has {len(data)} bytes, over the limit of {limits.max_row_bytes}",
                         _text(data))
    too_deep = BadRecord("too deep", f"the row nests deeper than {limits.max_depth} levels", _text(data, 1000))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return BadRecord("invalid UTF-8", f"byte {exc.start} is not UTF-8", _text(data))
    try:
        value = json.loads(text)
    except RecursionError:
        return too_deep
    except ValueError as exc:
        return BadRecord("invalid JSON", _short(exc), text.rstrip("\r\n"))
    if (isinstance(value, (dict, list)) and data.count(b"[") + data.count(b"{") > limits.max_depth
            and _nests_deeper(value, limits.max_depth)):
        return too_deep
    return value


def _jsonl_records(f, limits: Limits) -> Iterator[tuple[int, Any, int]]:
    """(line index, record or BadRecord, bytes read) of a binary JSONL stream; blank lines are skipped.

    A line longer than `limits.max_row_bytes` is never held whole: it is skipped to its end.
    """
    index = -1
    while True:
        line = f.readline(limits.max_row_bytes + 1)
        if not line:
            return
        index += 1
        if index == 0 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if len(line) > limits.max_row_bytes and not line.endswith(b"\n"):
            size = len(line)
            while not line.endswith(b"\n"):
                line = f.readline(READ_CHUNK)
                if not line:
                    break
                size += len(line)
            yield index, BadRecord("too large", f"the line has {size} bytes, over the limit of "
                                                f"{limits.max_row_bytes}", "[line not kept]"), 0
            continue
        if line.strip():
            yield index, parse_row(line, limits), len(line)


class _ArrayScanner:
    """Cuts a JSON array, read in chunks, into the bytes of its elements without parsing them.

    It tracks strings and bracket depth only; each element is then parsed alone (`parse_row`), so
    one bad element is one error row. Elements deeper than `max_depth` or larger than `max_bytes`
    are not kept, only counted.
    """

    def __init__(self, max_depth: int, max_bytes: int):
        self.max_depth, self.max_bytes = max_depth, max_bytes
        self.started = self.ended = self.in_string = self.escape = False
        self.depth = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.deep = False
        self.elements = 0
        self.trailing = b""

    def _take(self, piece: bytes) -> None:
        if self.deep or self.size > self.max_bytes:
            self.size += len(piece)
            return
        self.size += len(piece)
        if self.size > self.max_bytes:
            self.parts = []
        else:
            self.parts.append(piece)

    def _element(self, last: bool) -> Iterator[Any]:
        data = b"".join(self.parts).strip()
        size, deep = self.size, self.deep
        self.parts, self.size, self.deep = [], 0, False
        if deep:
            yield BadRecord("too deep", f"the row nests deeper than {self.max_depth} levels", "[row not kept]")
        elif size > self.max_bytes:
            yield BadRecord("too large", f"the row has about {size} bytes, over the limit of {self.max_bytes}",
                            "[row not kept]")
        elif data:
            yield data
        elif not (last and self.elements == 0):  # `[]` is an empty array; `[1,,2]` or `[1,]` a bad element
            yield BadRecord("invalid JSON", "an empty element between commas", "")
        self.elements += 1

    def feed(self, buf: bytes) -> Iterator[Any]:
        """The elements (bytes, or BadRecord) completed by this chunk."""
        i, n = 0, len(buf)
        start = 0
        while i < n:
            if self.ended:
                self.trailing += buf[i:].strip()[:100]
                return
            if self.in_string:
                if self.escape:
                    self.escape = False
                    i += 1
                    continue
                j = _STRING_BODY.match(buf, i).end()
                if j >= n:
                    break
                if buf[j] == _QUOTE:
                    self.in_string = False
                    i = j + 1
                else:  # a backslash as the last byte of the chunk
                    self.escape = True
                    i = n
                continue
            if not self.started:
                rest = buf[i:].lstrip()
                if not rest:
                    return
                if rest.startswith(b"\xef\xbb\xbf"):
                    i = n - len(rest) + 3
                    continue
                if rest[0] != _OPEN:
                    raise ValueError("not a JSON array")
                self.started, self.depth = True, 1
                i = start = n - len(rest) + 1
                continue
            m = _STRUCT.search(buf, i)
            if m is None:
                break
            k = m.start()
            c = buf[k]
            i = m.end()
            if c == _QUOTE:
                self.in_string = True
            elif c == _OPEN or c == _OPEN_OBJ:
                self.depth += _brackets(m.group())
                if self.depth - 1 > self.max_depth:
                    self.deep = True
            elif c == _CLOSE or c == _CLOSE_OBJ:
                closes = _brackets(m.group())
                if closes < self.depth:
                    self.depth -= closes
                    continue
                # the run closes the array: find its closing bracket, the run's depth-th
                seen = 0
                for j in range(k, i):
                    if buf[j] in (_CLOSE, _CLOSE_OBJ):
                        seen += 1
                        if seen == self.depth:
                            break
                self.depth = 0
                self._take(buf[start:j])
                yield from self._element(last=True)
                self.ended = True
                i = start = j + 1
            elif c == _COMMA and self.depth == 1:
                self._take(buf[start:k])
                yield from self._element(last=False)
                start = i
        if self.started and not self.ended:
            self._take(buf[start:n])


def iter_json_array(f, max_depth: int, max_bytes: int, chunk: int = READ_CHUNK) -> Iterator[Any]:
    """The elements of a JSON array in a binary stream: each as its bytes, or a BadRecord (too deep, too large).

    Raises ValueError when the stream is not one JSON array (no `[`, cut short, text after the `]`).
    """
    scanner = _ArrayScanner(max_depth, max_bytes)
    while True:
        buf = f.read(chunk)
        if not buf:
            break
        yield from scanner.feed(buf)
    if not scanner.started:
        return
    if not scanner.ended:
        raise ValueError("the file ends inside the array (cut short?)")
    if scanner.trailing:
        raise ValueError(f"text after the end of the array: {scanner.trailing[:40]!r}")


def _array_records(f, limits: Limits) -> Iterator[tuple[int, Any, int]]:
    for index, element in enumerate(iter_json_array(f, limits.max_depth, limits.max_row_bytes)):
        if isinstance(element, BadRecord):
            yield index, element, len(element.text)
        else:
            yield index, parse_row(element, limits), len(element)


# A batch of records holds at most `batch_rows` rows and BATCH_BYTES of their text (but for one row): a
# compressed file can hold far more once decoded (a 3 KB Parquet file 1 GiB of one repeated value). Parquet
# is decoded PARQUET_PIECE_ROWS rows at a time and its rows measured before they are built.
PARQUET_PIECE_ROWS = 64
BATCH_BYTES = 8 * 2**20


def row_bytes(array: pa.Array) -> np.ndarray:
    """Per row of an Arrow array, the bytes its values take once built (strings and binary by their length,
    list elements and other values 8 each), without building them."""
    t = array.type
    if pa.types.is_dictionary(t):
        lengths = row_bytes(array.dictionary)
        if not len(lengths):
            return np.zeros(len(array), dtype=np.int64)
        picked = lengths[array.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        return np.where(array.is_null().to_numpy(zero_copy_only=False), 0, picked)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        total = np.concatenate([[0], np.cumsum(row_bytes(array.values))])
        offsets = array.offsets.to_numpy(zero_copy_only=False)
        return total[offsets[1:]] - total[offsets[:-1]] + 8 * np.diff(offsets)
    if pa.types.is_struct(t):
        return sum((row_bytes(f) for f in array.flatten()), np.zeros(len(array), dtype=np.int64))
    if pa.types.is_primitive(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return np.full(len(array), 8, dtype=np.int64)
    # any other type (fixed-size lists, views, unions): each row built alone and measured as JSON
    return np.array([len(json.dumps(array.slice(i, 1).to_pylist(), default=str)) for i in range(len(array))],
                    dtype=np.int64)


def _parquet_records(src: SourceFile, batch_rows: int, limits: Limits) -> Iterator[list[tuple[int, Any]]]:
    """(row_index, record) batches of a Parquet file, each at most `batch_rows` rows and (but for one row)
    BATCH_BYTES once built; a row over `max_row_bytes` is a BadRecord and never built."""
    out: list[tuple[int, Any]] = []
    size = index = 0
    for piece in pq.ParquetFile(open_random_access(src.path)).iter_batches(
            batch_size=min(batch_rows, PARQUET_PIECE_ROWS)):
        sizes = sum((row_bytes(c) for c in piece.columns), np.zeros(piece.num_rows, dtype=np.int64))
        if sizes.max(initial=0) <= limits.max_row_bytes and size + sizes.sum() <= BATCH_BYTES \
                and len(out) + piece.num_rows <= batch_rows:  # the usual case: the piece whole
            out += enumerate(piece.to_pylist(), start=index)
            size += int(sizes.sum())
            index += piece.num_rows
        else:  # row by row: a row over the limit is never built, and the batch is cut at the budget
            for i, n in enumerate(sizes.tolist()):
                if out and (len(out) >= batch_rows or size + n > BATCH_BYTES):
                    yield out
                    out, size = [], 0
                if n > limits.max_row_bytes:
                    out.append((index, BadRecord("too large", f"the row holds {n:,} bytes, over the limit of "
                                                              f"{limits.max_row_bytes:,}", "[row not kept]")))
                else:
                    out.append((index, piece.slice(i, 1).to_pylist()[0]))
                    size += n
                index += 1
        if len(out) >= batch_rows:
            yield out
            out, size = [], 0
    if out:
        yield out


def iter_raw(src: SourceFile, batch_rows: int = 2048, limits: Limits = Limits()
             ) -> Iterator[list[tuple[int, Any]]]:
    """Batches of (row_index, record): a dict, another JSON value, or a BadRecord (why the row is unusable)."""
    try:
        if src.kind == "parquet":
            yield from _parquet_records(src, batch_rows, limits)
            return
        if src.kind not in ("jsonl", "json-array"):
            raise ValueError(f"unknown file kind {src.kind!r}")
        out: list[tuple[int, Any]] = []
        with open_binary(src.path) as f:
            records = (_jsonl_records(f, limits) if src.kind == "jsonl" else _array_records(f, limits))
            size = 0
            for index, record, nbytes in records:
                if out and (len(out) >= batch_rows or size + nbytes > BATCH_BYTES):
                    yield out
                    out, size = [], 0
                out.append((index, record))
                size += nbytes
        if out:
            yield out
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise UserError(f"{src.path}: cannot be read as {_kind_name(src.path)} ({_short(exc)})") from None


# ------------------------------------------------------------------ valid rows


@dataclass
class Batch:
    """One step of the stream, all from one file: valid trajectory rows and error rows (errors schema)."""

    source_file: str
    valid: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    valid_index: list[int] = field(default_factory=list)  # row_index of each valid row

    @property
    def n_read(self) -> int:
        return len(self.valid) + len(self.errors)


@dataclass
class IdRegistry:
    """Ids seen so far, with where each was first seen: the corpus-wide duplicate rule."""

    first_seen: dict[str, tuple[int, int]] = field(default_factory=dict)

    def claim(self, rid: str, file_index: int, row_index: int) -> tuple[int, int] | None:
        """Register `rid`; returns (file_index, row_index) of its first occurrence if it is a duplicate."""
        previous = self.first_seen.get(rid)
        if previous is None:
            self.first_seen[rid] = (file_index, row_index)
        return previous


@dataclass
class PlannedDuplicates:
    """The duplicate rule decided beforehand (e.g. by a Ray driver from every file's ids)."""

    duplicates: dict[tuple[int, int], tuple[int, int]]

    def claim(self, rid: str, file_index: int, row_index: int) -> tuple[int, int] | None:
        return self.duplicates.get((file_index, row_index))


class NoDuplicateCheck:
    def claim(self, rid: str, file_index: int, row_index: int) -> None:
        return None


def validate_record(
    record: Any, src: SourceFile, limits: Limits, step_separator: str
) -> dict[str, Any]:
    """One raw record → a valid trajectory row, or RowError. (No duplicate check.)"""
    if isinstance(record, BadRecord):
        raise RowError(record.kind, record.detail)
    if not isinstance(record, dict):
        raise RowError("wrong type", f"expected a JSON object, got {type(record).__name__}")
    row = to_trajectory(record, src.fmt, MapContext(file_stem=src.name.split(".")[0], step_separator=step_separator))
    if not src.has_ids and row.get("id") is None:
        row["id"] = content_id(row.get("problem"), row.get("steps"))
        if row["id"] is None:  # problem/steps unusable: let the checks name the reason
            row["id"] = "h-unhashable"
    # PRMBench's data has empty steps, and its scorer scores them
    return check_trajectory(row, limits, allow_empty_steps=src.fmt == "prmbench")


def iter_file_batches(
    sources: list[SourceFile],
    file_index: int,
    *,
    ids: IdRegistry | PlannedDuplicates | NoDuplicateCheck,
    limits: Limits = Limits(),
    step_separator: str = "\n\n",
    batch_rows: int = 2048,
) -> Iterator[Batch]:
    """Stream every row of `sources[file_index]` into exactly one of valid / errors."""
    src = sources[file_index]
    source_file = str(src.path)
    for raw in iter_raw(src, batch_rows, limits):
        batch = Batch(source_file=source_file, valid=[], errors=[])
        for row_index, record in raw:
            rid = record.get("id") if isinstance(record, dict) else None
            try:
                row = validate_record(record, src, limits, step_separator)
                rid = row["id"]
                first = ids.claim(rid, file_index, row_index)
                if first is not None:
                    where = f"{sources[first[0]].name} row {first[1]}"
                    raise RowError("duplicate id", f"{rid!r} first seen at {where}")
                batch.valid.append(row)
                batch.valid_index.append(row_index)
            except RowError as exc:
                shown = record.text if isinstance(record, BadRecord) else record
                batch.errors.append(error_row(source_file, row_index, rid, exc.reason, shown))
        yield batch


def iter_batches(
    sources: list[SourceFile],
    *,
    limits: Limits = Limits(),
    step_separator: str = "\n\n",
    batch_rows: int = 2048,
) -> Iterator[Batch]:
    """Stream the whole corpus, file by file; a duplicate id keeps its first occurrence."""
    ids = IdRegistry()
    for file_index in range(len(sources)):
        yield from iter_file_batches(sources, file_index, ids=ids, limits=limits,
                                     step_separator=step_separator, batch_rows=batch_rows)


def validate_records(records: Iterable[Any], fmt: str = "auto", *, limits: Limits = Limits(),
                     step_separator: str = "\n\n", source: str = "<memory>") -> Batch:
    """In-memory records (dicts of any input format) through the same checks as a file's rows: the valid
    canonical rows and the error rows (errors schema), the duplicate-id rule included. `fmt` auto: each
    record's format from its keys (actprm.io.formats.detect_format). A record without an id gets its
    content hash, as a file without an id column does."""
    batch = Batch(source_file=source, valid=[], errors=[])
    ids = IdRegistry()
    for row_index, record in enumerate(records):
        rid = record.get("id") if isinstance(record, dict) else None
        try:
            kind = fmt
            if kind == "auto":
                kind = detect_format(list(record)) if isinstance(record, dict) else None
                if kind is None and isinstance(record, dict):
                    raise RowError("unknown format", f"no input format has the keys {sorted(record)[:8]}")
            src = SourceFile(path=source, kind="memory", fmt=kind or "canonical", has_ids=False, n_rows=None)
            row = validate_record(record, src, limits, step_separator)
            rid = row["id"]
            first = ids.claim(rid, 0, row_index)
            if first is not None:
                raise RowError("duplicate id", f"{rid!r} first seen at record {first[1]}")
            batch.valid.append(row)
            batch.valid_index.append(row_index)
        except RowError as exc:
            batch.errors.append(error_row(source, row_index, rid, exc.reason, record))
    return batch


def require_input_output(cfg) -> None:
    """A job config's `input` and `output` are set (a user error otherwise)."""
    if not cfg.input:
        raise UserError("no input: pass --input PATH (a file, a directory or a glob)")
    if not cfg.output:
        raise UserError("no output: pass --output DIR")


def check_paths(cfg) -> list[SourceFile]:
    """A job config's `input` and `output` are set, and every input file passes pre-flight."""
    require_input_output(cfg)
    return open_corpus(cfg.input, cfg.format)


def plan_duplicates(ids_per_file: list[list[tuple[int, str]]]) -> list[dict]:
    """For each file, {(file, row): (first_file, first_row)} of the rows whose id was seen before."""
    registry = IdRegistry()
    plans: list[dict] = [{} for _ in ids_per_file]
    for file_index, ids in enumerate(ids_per_file):
        for row_index, rid in ids:
            first = registry.claim(rid, file_index, row_index)
            if first is not None:
                plans[file_index][(file_index, row_index)] = first
    return plans
