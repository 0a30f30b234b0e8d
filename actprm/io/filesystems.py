"""Where input files live: local paths, or URIs on any filesystem pyarrow supports.

A *location* is a `pathlib.Path` (a local file) or a `str` URI with a scheme, e.g.
`s3://bucket/corpus/part-0.parquet`, `gs://...`, `hdfs://...`, `abfs://...`, `file:///data/x.jsonl`.
URIs are resolved with `pyarrow.fs.FileSystem.from_uri`, so credentials come from the usual
environment of each filesystem (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN /
AWS_REGION or ~/.aws for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS, ...): nothing secret is ever
put in a location or written to an output. pyarrow's URI options pass through the query string
and are kept on every file listed from it, e.g.
`s3://bucket/corpus/?endpoint_override=127.0.0.1:9000&scheme=http` for MinIO or a local S3.

Ray workers resolve locations themselves (a location is a plain string), so on a cluster the
credentials must be in each node's environment (e.g. `runtime_env={"env_vars": {...}}`).
"""

from __future__ import annotations

import gzip
import io
import re
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from actprm.errors import UserError

Location = Path | str
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
GLOB_CHARS = "*?["


def is_uri(text: str | Path) -> bool:
    """True for `scheme://...` text (a Path never is: local paths stay Paths)."""
    return isinstance(text, str) and bool(_SCHEME.match(text))


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme://authority-less prefix, path part, ?query) of a URI, e.g. ('s3://', 'b/k', '?x=1')."""
    parts = urlsplit(uri)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://", uri[len(parts.scheme) + 3:].split("?", 1)[0], query


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of `uri` and the path on it; a UserError naming the URI if it cannot be used."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise UserError(f"{uri}: cannot open this location ({' '.join(str(exc).split())[:200]})") from None


def file_name(loc: Location) -> str:
    """The last component of a location (no query string)."""
    if isinstance(loc, Path):
        return loc.name
    return _split(loc)[1].rstrip("/").rsplit("/", 1)[-1]


def file_size(loc: Location) -> int:
    """Size in bytes (what a resume marker records to notice a changed input)."""
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, path = resolve(loc)
    return int(fs.get_file_info(path).size or 0)


def open_binary(loc: Location) -> IO[bytes]:
    """A readable binary stream, gunzipped when the name ends in .gz."""
    if isinstance(loc, Path):
        raw: IO[bytes] = open(loc, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    else:
        fs, path = resolve(loc)
        raw = fs.open_input_stream(path)
    return gzip.open(raw, "rb") if file_name(loc).lower().endswith(".gz") else raw  # type: ignore[return-value]


def open_text(loc: Location) -> IO[str]:
    return io.TextIOWrapper(open_binary(loc), encoding="utf-8")


def open_random_access(loc: Location):
    """What `pyarrow.parquet.ParquetFile` reads: the local path itself, or a seekable remote file."""
    if isinstance(loc, Path):
        return loc
    fs, path = resolve(loc)
    return fs.open_input_file(path)


_SECRET_OPTION = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)


def refuse_secrets(uri: str) -> None:
    """Locations are written to outputs (summaries, error rows, markers): one holding a credential
    (`s3://KEY:SECRET@bucket/...`, or a `?secret_key=` option) is refused before anything is read."""
    parts = urlsplit(uri)
    options = [kv.split("=", 1)[0] for kv in parts.query.split("&") if kv]
    if "@" in parts.netloc or any(_SECRET_OPTION.search(k) for k in options):
        raise UserError(f"{parts.scheme}://{parts.hostname or ''}/...: credentials in a location would be written to "
                        "the outputs; set them in the environment instead (e.g. AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)")


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path pattern as a regex with `glob`'s rules: `*`, `?`, `[...]` stay within one name, `**/` spans
    any number of directories (none included)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def list_uri(text: str) -> tuple[list[str], str]:
    """Files under a URI: itself if a file, every file below it if a directory, the matches if a glob
    (`*`, `?`, `[...]` within a name, `**` across directories, as for local paths). Returns (URIs sorted,
    kind: "file", "directory" or "pattern");
    names starting with `.` or `_` below a directory are skipped, as for local directories."""
    refuse_secrets(text)
    prefix, path, query = _split(text)
    pattern = any(ch in path for ch in GLOB_CHARS)
    base = path
    if pattern:  # list from the deepest directory without a glob character
        head = re.split(r"[*?\[]", path, maxsplit=1)[0]
        base = head.rsplit("/", 1)[0] if "/" in head else head
    fs, _ = resolve(prefix + base + query)
    try:
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.NotFound:
            if pattern:
                return [], "pattern"
            raise UserError(f"{text}: no such file or directory")
        if info.type == pafs.FileType.File:
            if pattern:
                return ([prefix + base + query] if glob_regex(path).match(base) else []), "pattern"
            return [prefix + base + query], "file"
        found = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except OSError as exc:
        raise UserError(f"{text}: cannot list this location ({' '.join(str(exc).split())[:200]})") from None
    out, matcher = [], glob_regex(path)
    for f in found:
        if f.type != pafs.FileType.File:
            continue
        rel = f.path[len(base):].lstrip("/")
        if pattern:
            if not matcher.match(f.path):
                continue
        elif any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        out.append(prefix + f.path + query)
    return sorted(out), "pattern" if pattern else "directory"
