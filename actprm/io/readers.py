"""Read a corpus in any supported format as a stream of validated trajectory rows.

`open_corpus(inputs)` lists and pre-flights every file (it exists, it can be read,
its format is known and its required columns are there) before any row is read,
so a bad file fails the job in one line before anything is written. `iter_batches`
then streams batches of valid rows and error rows; memory stays flat in the size of
any one file (Parquet row groups, JSONL lines and JSON arrays are all read
incrementally). The one piece of corpus-wide state is the set of ids already seen:
a duplicate id keeps its first occurrence by (file order, row order).
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import ijson
import pyarrow.parquet as pq

from actprm.errors import UserError
from actprm.io.filesystems import (
    Location,
    file_name,
    is_uri,
    list_uri,
    open_binary,
    open_random_access,
    open_text,
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


def list_files(inputs: list[str | os.PathLike]) -> list[Location]:
    """Files named by paths, directories (searched recursively) and globs, in a stable order.

    Local files come back as Paths; `scheme://` inputs (s3://, gs://, hdfs://, ...: any filesystem
    pyarrow supports, see actprm.io.filesystems) as URI strings of the same form.
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
                candidates = sorted(
                    p for p in path.rglob("*")
                    if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
                )
                candidates = [p for p in candidates if _has_suffix(p, DATA_SUFFIXES)]
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
        while True:
            chunk = f.read(4096)
            if not chunk:
                return "empty"
            stripped = chunk.lstrip()
            if stripped:
                return {ord("["): "json-array", ord("{"): "jsonl"}.get(stripped[0], "unknown")


def _first_record(path: Location, kind: str) -> dict[str, Any] | None:
    """The first JSON object of a JSONL file or JSON array, for format detection."""
    if kind == "jsonl":
        with open_text(path) as f:
            for line in f:
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict):
                        return record
        return None
    with open_binary(path) as f:
        for record in ijson.items(f, "item", use_float=True):
            return record if isinstance(record, dict) else None
    return None


def inspect_file(path: Location, fmt: str = "auto") -> SourceFile:
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
        else:
            kind = "jsonl" if _has_suffix(path, JSONL_SUFFIXES) else _sniff_json(path)
            if kind == "empty":
                return SourceFile(path, "jsonl", fmt if fmt != "auto" else "canonical", False, 0)
            if kind == "unknown":
                raise UserError(f"{path}: not JSON (expected a JSON array or one JSON object per line)")
            first = _first_record(path, kind)
            if first is None:
                if kind == "jsonl":  # no usable line: every line becomes an error row
                    return SourceFile(path, kind, fmt if fmt != "auto" else "canonical", False, None)
                return SourceFile(path, kind, fmt if fmt != "auto" else "canonical", False, 0)
            columns = list(first)
    except UserError:
        raise
    except (OSError, ValueError, EOFError, ijson.JSONError) as exc:
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


def open_corpus(inputs: list[str | os.PathLike], fmt: str = "auto") -> list[SourceFile]:
    """List and pre-flight every input file. An empty list means an empty corpus."""
    return [inspect_file(path, fmt) for path in list_files(inputs)]


def known_rows(sources: list[SourceFile]) -> int | None:
    """Rows in the corpus when every file says up front (Parquet), else None: a progress bar's total."""
    counts = [s.n_rows for s in sources]
    return sum(counts) if all(n is not None for n in counts) else None


# ------------------------------------------------------------------- raw records


def iter_raw(src: SourceFile, batch_rows: int = 2048) -> Iterator[list[tuple[int, Any]]]:
    """Batches of (row_index, record) where record is a dict, or the raw line text when it is not JSON."""
    try:
        if src.kind == "parquet":
            index = 0
            for batch in pq.ParquetFile(open_random_access(src.path)).iter_batches(batch_size=batch_rows):
                records = batch.to_pylist()
                yield list(enumerate(records, start=index))
                index += len(records)
        elif src.kind == "jsonl":
            out: list[tuple[int, Any]] = []
            with open_text(src.path) as f:
                for index, line in enumerate(f):
                    if not line.strip():
                        continue
                    try:
                        out.append((index, json.loads(line)))
                    except json.JSONDecodeError:
                        out.append((index, line.rstrip("\n")))
                    if len(out) >= batch_rows:
                        yield out
                        out = []
            if out:
                yield out
        elif src.kind == "json-array":
            out = []
            with open_binary(src.path) as f:
                for index, record in enumerate(ijson.items(f, "item", use_float=True)):
                    out.append((index, record))
                    if len(out) >= batch_rows:
                        yield out
                        out = []
            if out:
                yield out
        else:
            raise ValueError(f"unknown file kind {src.kind!r}")
    except (OSError, EOFError, ijson.JSONError, UnicodeDecodeError) as exc:
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
    if isinstance(record, str):
        raise RowError("invalid JSON", "the line is not valid JSON")
    if not isinstance(record, dict):
        raise RowError("wrong type", f"expected a JSON object, got {type(record).__name__}")
    row = to_trajectory(record, src.fmt, MapContext(file_stem=src.name.split(".")[0], step_separator=step_separator))
    if not src.has_ids and row.get("id") is None:
        row["id"] = content_id(row.get("problem"), row.get("steps"))
        if row["id"] is None:  # problem/steps unusable: let the checks name the reason
            row["id"] = "h-unhashable"
    return check_trajectory(row, limits)


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
    for raw in iter_raw(src, batch_rows):
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
                batch.errors.append(error_row(source_file, row_index, rid, exc.reason, record))
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
