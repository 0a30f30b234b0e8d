"""Write rows as sharded Parquet with exactly the canonical schema of their table.

Every shard is cast to `actprm.schemas.arrow_schema(table)` and written to a temporary
name, then renamed, so a reader never sees half a shard and no two shards of a table
can differ in schema (no string vs large_string drift). Every file carries the job's
provenance (actprm.provenance) in its schema metadata.

Output directories: nothing is created before a job writes (checks only: `check_output_path`);
a path that cannot be created is one line (`make_dirs`); a symbolic link where an earlier output
would be replaced is refused before the job starts (never deleted through); staging directories
are named after their host and process, and those of dead processes are removed by the next run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actprm import provenance
from actprm.errors import UserError
from actprm.io.lock import check_name_length, output_lock
from actprm.schemas import table_from_rows, to_canonical


def _reason(exc: OSError) -> str:
    return exc.strerror or " ".join(str(exc).split()) or type(exc).__name__


def check_output_path(path: str | os.PathLike) -> Path:
    """`path` can become an output directory: it is one, or its nearest existing parent is a writable
    directory. Checks only; nothing is created."""
    out = Path(path)
    check_name_length(out)
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a directory")
        parent = out
        while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
            parent = parent.parent
    except OSError as exc:  # a path the system refuses to look up (too long, a loop of links)
        raise UserError(f"{out}: cannot be used as an output ({_reason(exc)})") from None
    if not parent.is_dir():
        raise UserError(f"{out}: cannot be created: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: cannot be created: {parent} is not writable")
    return out


def make_dirs(path: str | os.PathLike) -> Path:
    """mkdir -p, with a failure as one line (a read-only or virtual filesystem, a file in the way)."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out}: cannot create this directory ({_reason(exc)})") from None
    return out


def refuse_link(target: Path) -> None:
    """An earlier output about to be replaced must not be a symbolic link: what it points to is not ours."""
    if target.is_symlink():
        raise UserError(f"{target}: is a symbolic link; actprm does not replace or delete through links "
                        "(remove the link or choose another --output)")


def remove_output(target: Path) -> None:
    """Remove an earlier output (a directory or a file) at `target`; a link is refused, a failure is one line."""
    refuse_link(target)
    try:
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    except OSError as exc:
        raise UserError(f"{target}: cannot remove the earlier output ({_reason(exc)})") from None


def check_output_dir(path: str | os.PathLike | None, overwrite: bool) -> Path:
    """`path` as an output directory: absent, empty, or `overwrite` given; else a user error (also when no
    output was given). Creates nothing."""
    if not path:
        raise UserError("no output: pass --output DIR")
    out = check_output_path(path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose another --output or pass --overwrite")
    if overwrite:
        refuse_link(out)
    return out


# ------------------------------------------------------------------------ staging directories

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def staging_name(prefix: str) -> str:
    """`PREFIX<host>-<pid>-<random>`: whose it is, so that the next run can tell a dead run's from a live one's."""
    return f"{prefix}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def clean_stale_staging(directory: Path, prefix: str) -> list[Path]:
    """Remove `directory/PREFIX*` left by killed runs: those of this host whose process is gone, and the
    older `PREFIX<8 hex>` names (written before staging names carried their process). Returns them."""
    removed = []
    try:
        entries = [p for p in directory.iterdir() if p.name.startswith(prefix)] if directory.is_dir() else []
    except OSError:
        return removed
    for path in entries:
        rest = path.name[len(prefix):]
        match = re.fullmatch(r"([A-Za-z0-9]+)-(\d+)-[0-9a-f]{8}", rest)
        stale = (re.fullmatch(r"[0-9a-f]{8}", rest) is not None
                 or (match is not None and match.group(1) == _HOST and not _alive(int(match.group(2)))))
        if stale and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def replaced_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh staging directory next to `out`; on success it replaces `out` whole.

    A job killed or failing inside the block leaves `out` as it was (and no staging behind; one of a
    killed process is removed by the next run).
    """
    out = check_output_path(out)
    refuse_link(out)
    make_dirs(out.parent)
    with output_lock(out):  # one run per output at a time (exit 2 naming the holder)
        clean_stale_staging(out.parent, f".{out.name}.staging-")
        staging = make_dirs(out.parent / staging_name(f".{out.name}.staging-"))
        try:
            yield staging
            remove_output(out)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _tmp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` whole (temp file + rename), with the job's provenance in its metadata.

    Every Parquet file actprm writes goes through here; see actprm.provenance for the record.
    """
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **provenance.metadata()})
    tmp = _tmp_beside(path)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_text_atomic(text: str, path: Path) -> None:
    """`path` holds the old text or the new one, never a part (a killed job's markers stay whole)."""
    tmp = _tmp_beside(path)
    tmp.write_text(text)
    os.replace(tmp, path)


class ShardWriter:
    """Writes rows of one table as `PREFIX-00000.parquet`, `PREFIX-00001.parquet`, ... (`rows_per_shard` rows each),
    streamed: a shard is written row group by row group (`row_group_rows` rows, or fewer once they hold
    ROW_GROUP_BYTES) to a hidden temporary file and renamed when it is full or closed, so the writer holds
    at most one row group, not a shard."""

    ROW_GROUP_BYTES = 8 * 2**20

    def __init__(self, directory: str | os.PathLike, table: str, rows_per_shard: int = 100_000,
                 prefix: str = "part", row_group_rows: int = 8192):
        if rows_per_shard < 1 or row_group_rows < 1:
            raise ValueError("rows_per_shard and row_group_rows must be at least 1")
        self.directory = Path(directory)
        self.table = table
        self.rows_per_shard = rows_per_shard
        self.row_group_rows = min(row_group_rows, rows_per_shard)
        self.prefix = prefix
        make_dirs(self.directory)
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self._bytes = 0
        self._open: tuple[pq.ParquetWriter, Path, Path] | None = None  # (writer, temporary, final)
        self._in_shard = 0  # rows written to the open shard
        self.shards = 0
        self.rows_written = 0

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._add(table_from_rows(rows, self.table))

    def add_table(self, table: pa.Table) -> None:
        self._add(to_canonical(table, self.table))

    def _add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered += table.num_rows
        self._bytes += table.nbytes
        self._maybe_flush()

    def _maybe_flush(self, final: bool = False) -> None:
        """Write full row groups (all that is buffered when `final`), cutting shards at rows_per_shard."""
        while (self._buffered >= self.row_group_rows or self._bytes >= self.ROW_GROUP_BYTES
               or (final and self._buffered)):
            table = pa.concat_tables(self._tables)
            n = min(self.row_group_rows, self.rows_per_shard - self._in_shard, table.num_rows)
            self._write_group(table.slice(0, n))
            rest = table.slice(n)
            self._tables = [rest] if rest.num_rows else []
            self._buffered, self._bytes = rest.num_rows, rest.nbytes if rest.num_rows else 0

    def _write_group(self, table: pa.Table) -> None:
        if self._open is None:
            final = self.directory / f"{self.prefix}-{self.shards:05d}.parquet"
            schema = table.schema.with_metadata({**(table.schema.metadata or {}), **provenance.metadata()})
            tmp = _tmp_beside(final)
            self._open = (pq.ParquetWriter(tmp, schema, compression="zstd"), tmp, final)
        self._open[0].write_table(table.combine_chunks())
        self._in_shard += table.num_rows
        self.rows_written += table.num_rows
        if self._in_shard >= self.rows_per_shard:
            self._finish_shard()

    def _finish_shard(self) -> None:
        writer, tmp, final = self._open
        writer.close()
        os.replace(tmp, final)
        self._open, self._in_shard = None, 0
        self.shards += 1

    def close(self) -> None:
        """Write what is buffered. A table with no rows still gets one empty shard with its schema."""
        self._maybe_flush(final=True)
        if self._open is not None:
            self._finish_shard()
        elif self.shards == 0:
            write_parquet_atomic(table_from_rows([], self.table), self.directory / f"{self.prefix}-00000.parquet")
            self.shards = 1
        self._tables, self._buffered, self._bytes = [], 0, 0

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        elif self._open is not None:  # a failed job: no half shard stays behind
            self._open[0].close()
            self._open[1].unlink(missing_ok=True)
            self._open = None


class StagedOutput:
    """An output directory that appears only when the job succeeds.

    Sub-tables are written under `DIR/.staging-<host>-<pid>-XXXX/` and moved into `DIR/` by `commit()`;
    a failed job leaves `DIR` as it was. An existing sub-table is an error unless `overwrite` is set,
    and one that is a symbolic link always is. Construction only checks: `DIR` and the staging
    directory are made when the job first asks for a path to write (`path()`, `staging`).
    """

    PREFIX = ".staging-"

    def __init__(self, directory: str | os.PathLike, parts: list[str], overwrite: bool = False):
        self.directory = check_output_path(directory)
        self.parts = parts
        existing = [p for p in parts if (self.directory / p).exists() or (self.directory / p).is_symlink()]
        if existing and not overwrite:
            raise UserError(
                f"{self.directory}: already holds {', '.join(existing)}; choose another --output or pass --overwrite"
            )
        if existing:  # replacing tables inside a linked directory would delete what the link points to
            refuse_link(self.directory)
        for part in existing:
            refuse_link(self.directory / part)
        self._staging: Path | None = None
        self._made = False  # this run made DIR: a failed run removes it again (if still empty)
        # one run per output at a time (exit 2 naming the holder): taken now where the lock's place exists,
        # else with the first write (construction creates nothing)
        self._lock = output_lock(self.directory).acquire() if self.directory.parent.is_dir() else None

    @property
    def staging(self) -> Path:
        """The staging directory, made on first use (with `DIR`); stale ones of killed runs are removed then."""
        if self._staging is None:
            if self._lock is None:
                make_dirs(self.directory.parent)
                self._lock = output_lock(self.directory).acquire()
            self._made = not self.directory.exists()
            make_dirs(self.directory)
            clean_stale_staging(self.directory, self.PREFIX)
            self._staging = make_dirs(self.directory / staging_name(self.PREFIX))
        return self._staging

    def path(self, part: str) -> Path:
        return self.staging / part

    def commit(self) -> None:
        try:
            if self._staging is None:  # nothing was written
                return
            for part in self.parts:  # an earlier run's part goes even when this run has none (e.g. no plot)
                remove_output(self.directory / part)
                staged = self._staging / part
                if staged.exists():
                    os.replace(staged, self.directory / part)
            shutil.rmtree(self._staging, ignore_errors=True)
        finally:
            self._unlock()

    def abort(self) -> None:
        try:
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
            if self._made:
                with contextlib.suppress(OSError):  # not empty: another writer's files stay
                    self.directory.rmdir()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def optional_output(directory: str | os.PathLike | None, parts: list[str], overwrite: bool = False
                    ) -> Iterator[StagedOutput | None]:
    """A StagedOutput (committed when the block succeeds) for a job whose output directory is optional;
    None without one."""
    if not directory:
        yield None
        return
    with StagedOutput(directory, parts, overwrite) as out:
        yield out
