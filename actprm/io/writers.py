"""Write rows as sharded Parquet with exactly the canonical schema of their table.

Every shard is cast to `actprm.schemas.arrow_schema(table)` and written to a temporary
name, then renamed, so a reader never sees half a shard and no two shards of a table
can differ in schema (no string vs large_string drift). Every file carries the job's
provenance (actprm.provenance) in its schema metadata.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from actprm import provenance
from actprm.errors import UserError
from actprm.schemas import table_from_rows, to_canonical


def check_output_dir(path: str | os.PathLike, overwrite: bool) -> Path:
    """`path` as an output directory: absent, empty, or `overwrite` given; else a user error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose another --output or pass --overwrite")
    return out


@contextmanager
def replaced_dir(out: Path) -> Iterator[Path]:
    """Yield a fresh staging directory next to `out`; on success it replaces `out` whole.

    A job killed or failing inside the block leaves `out` as it was (and no staging behind).
    """
    staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
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
    """Buffers rows of one table and writes `PREFIX-00000.parquet`, `PREFIX-00001.parquet`, ..."""

    def __init__(self, directory: str | os.PathLike, table: str, rows_per_shard: int = 100_000,
                 prefix: str = "part"):
        if rows_per_shard < 1:
            raise ValueError("rows_per_shard must be at least 1")
        self.directory = Path(directory)
        self.table = table
        self.rows_per_shard = rows_per_shard
        self.prefix = prefix
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rows: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._buffered = 0
        self.shards = 0
        self.rows_written = 0

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self._rows.extend(rows)
        self._buffered += len(rows)
        self._maybe_flush()

    def add_table(self, table: pa.Table) -> None:
        self._flush_rows_to_table()
        self._tables.append(to_canonical(table, self.table))
        self._buffered += table.num_rows
        self._maybe_flush()

    def _flush_rows_to_table(self) -> None:
        if self._rows:
            self._tables.append(table_from_rows(self._rows, self.table))
            self._rows = []

    def _maybe_flush(self) -> None:
        while self._buffered >= self.rows_per_shard:
            self._flush_rows_to_table()
            table = pa.concat_tables(self._tables)
            self._write(table.slice(0, self.rows_per_shard))
            rest = table.slice(self.rows_per_shard)
            self._tables = [rest] if rest.num_rows else []
            self._buffered = rest.num_rows

    def _write(self, table: pa.Table) -> None:
        write_parquet_atomic(table.combine_chunks(), self.directory / f"{self.prefix}-{self.shards:05d}.parquet")
        self.shards += 1
        self.rows_written += table.num_rows

    def close(self) -> None:
        """Write what is buffered. A table with no rows still gets one empty shard with its schema."""
        self._flush_rows_to_table()
        if self._tables:
            table = pa.concat_tables(self._tables)
            if table.num_rows or self.shards == 0:
                self._write(table)
        elif self.shards == 0:
            self._write(table_from_rows([], self.table))
        self._tables, self._buffered = [], 0

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()


class StagedOutput:
    """An output directory that appears only when the job succeeds.

    Sub-tables are written under `DIR/.staging-XXXX/` and moved into `DIR/` by `commit()`;
    a failed job leaves `DIR` as it was. An existing sub-table is an error unless
    `overwrite` is set.
    """

    def __init__(self, directory: str | os.PathLike, parts: list[str], overwrite: bool = False):
        self.directory = Path(directory)
        self.parts = parts
        existing = [p for p in parts if (self.directory / p).exists()]
        if existing and not overwrite:
            raise UserError(
                f"{self.directory}: already holds {', '.join(existing)}; choose another --output or pass --overwrite"
            )
        if self.directory.exists() and not self.directory.is_dir():
            raise UserError(f"{self.directory}: exists and is not a directory")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.staging = self.directory / f".staging-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir()

    def path(self, part: str) -> Path:
        return self.staging / part

    def commit(self) -> None:
        for part in self.parts:
            target = self.directory / part
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            staged = self.staging / part
            if staged.exists():
                os.replace(staged, target)
        shutil.rmtree(self.staging, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
