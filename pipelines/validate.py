"""`actprm validate`: read a corpus in any format, write valid rows and error rows.

    DIR/valid/*.parquet    trajectories schema
    DIR/errors/*.parquet   errors schema (reason + the original row)
    DIR/summary.json       counts

Every input row lands in exactly one of valid/ or errors/. A bad file stops the job before
anything is written (pre-flight), or, if it breaks mid-way, the staged output is discarded.

In-process by default; `--ray` spreads it over a cluster, one task per input file:
1. pre-flight every file on the driver;
2. phase 1, in parallel: each file's valid row ids, in row order;
3. on the driver: the corpus-wide duplicate rule (the first occurrence by file, then row, wins);
4. phase 2, in parallel: each file's rows written as shards, planned duplicates to errors;
5. the staged output is committed; one summary line.
On a cluster, --output must be a path every node can write (a shared filesystem).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import ray

from actprm import provenance
from actprm.config import ValidateConfig
from actprm.io.readers import (
    Batch,
    NoDuplicateCheck,
    PlannedDuplicates,
    SourceFile,
    check_paths,
    iter_batches,
    iter_file_batches,
    known_rows,
    plan_duplicates,
)
from actprm.io.writers import ShardWriter, StagedOutput
from actprm.progress import JobResult, RowCounts, progress_bar
from pipelines.ray_session import init_ray

PARTS = ["valid", "errors", "summary.json"]


@dataclass
class ValidateResult(JobResult):
    counts: RowCounts
    n_files: int
    seconds: float
    output: Path

    def summary_line(self) -> str:
        c = self.counts
        rate = c.read / self.seconds if self.seconds > 0 else 0.0
        return (f"validate: {c.read} rows read from {self.n_files} files, {c.valid} valid, "
                f"{c.errors_text()} in {self.seconds:.1f}s ({rate:,.0f} rows/s) -> {self.output}")


def write_batches(batches: Iterable[Batch], staging: Path, cfg: ValidateConfig, prefix: str = "part",
                  bar=None) -> RowCounts:
    """Write a stream of batches into STAGING/valid and STAGING/errors; count them."""
    counts = RowCounts()
    with ShardWriter(staging / "valid", "trajectories", cfg.rows_per_shard, prefix) as valid, \
         ShardWriter(staging / "errors", "errors", cfg.rows_per_shard, prefix) as errors:
        for batch in batches:
            valid.add_rows(batch.valid)
            errors.add_rows(batch.errors)
            counts.read += batch.n_read
            counts.valid += len(batch.valid)
            counts.add_errors(batch.errors)
            if bar is not None:
                bar.update(batch.n_read)
    return counts


def write_summary(path: Path, sources: list[SourceFile], counts: RowCounts, seconds: float) -> None:
    summary = {"files": [str(s.path) for s in sources], **counts.as_dict(), "seconds": round(seconds, 3)}
    path.write_text(json.dumps(summary, indent=2) + "\n")


def run(cfg: ValidateConfig, progress: bool = True) -> ValidateResult:
    if cfg.ray:
        return run_on_ray(cfg, progress)
    start = time.perf_counter()
    sources = check_paths(cfg)
    total = known_rows(sources)
    with StagedOutput(cfg.output, PARTS, cfg.overwrite) as out, progress_bar(total, "validate", progress) as bar:
        batches = iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                               batch_rows=cfg.batch_rows)
        counts = write_batches(batches, out.staging, cfg, bar=bar)
        seconds = time.perf_counter() - start
        write_summary(out.path("summary.json"), sources, counts, seconds)
    return ValidateResult(counts, len(sources), seconds, Path(cfg.output))


# ------------------------------------------------------------------ on Ray


@ray.remote
def file_ids(sources: list[SourceFile], file_index: int, cfg: ValidateConfig) -> list[tuple[int, str]]:
    """(row_index, id) of every row of one file that passes the per-row checks."""
    out: list[tuple[int, str]] = []
    for batch in iter_file_batches(sources, file_index, ids=NoDuplicateCheck(), limits=cfg.limits,
                                   step_separator=cfg.step_separator, batch_rows=cfg.batch_rows):
        out.extend(zip(batch.valid_index, (row["id"] for row in batch.valid)))
    return out


@ray.remote
def write_file(sources: list[SourceFile], file_index: int, duplicates: dict, cfg: ValidateConfig,
               staging: str, record: dict) -> RowCounts:
    provenance.use(record)  # the driver's job record, for the shards this task writes
    batches = iter_file_batches(sources, file_index, ids=PlannedDuplicates(duplicates), limits=cfg.limits,
                                step_separator=cfg.step_separator, batch_rows=cfg.batch_rows)
    return write_batches(batches, Path(staging), cfg, prefix=f"file-{file_index:05d}")


def run_on_ray(cfg: ValidateConfig, progress: bool = True) -> ValidateResult:
    start = time.perf_counter()
    sources = check_paths(cfg)
    init_ray(cfg.address)
    ids_per_file = ray.get([file_ids.remote(sources, i, cfg) for i in range(len(sources))])
    plans = plan_duplicates(ids_per_file)
    counts = RowCounts()
    with StagedOutput(cfg.output, PARTS, cfg.overwrite) as out, \
         progress_bar(len(sources), "validate (files)", progress, unit="files") as bar:
        record = provenance.current()
        pending = [write_file.remote(sources, i, plans[i], cfg, str(out.staging), record)
                   for i in range(len(sources))]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            counts.merge(ray.get(done[0]))
            bar.update(1)
        seconds = time.perf_counter() - start
        write_summary(out.path("summary.json"), sources, counts, seconds)
    return ValidateResult(counts, len(sources), seconds, Path(cfg.output))


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["validate", "--ray", *sys.argv[1:]]))
