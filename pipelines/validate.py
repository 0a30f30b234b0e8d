"""Recipe: validate a corpus on Ray.

Same inputs, outputs and rules as `actprm validate` (actprm/validate.py), spread over a
cluster, one task per input file:

1. pre-flight every file on the driver (a bad file: one line, exit code 2, nothing written)
2. phase 1, in parallel: each file's valid row ids, in row order
3. on the driver: the corpus-wide duplicate rule (the first occurrence by file, then row, wins)
4. phase 2, in parallel: each file's rows written as shards, planned duplicates to errors
5. the staged output is committed; one summary line

Run:  python -m pipelines.validate --input corpus/ --output out/checked [--address ADDR]
 or:  actprm validate --ray ...      or:  ray job submit --working-dir . -- python -m pipelines.validate ...
On a cluster, --output must be a path every node can write (a shared filesystem).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ray

from actprm import provenance
from actprm.config import ValidateConfig
from actprm.io.readers import IdRegistry, NoDuplicateCheck, PlannedDuplicates, SourceFile, iter_file_batches
from actprm.io.writers import StagedOutput
from actprm.progress import RowCounts, progress_bar
from actprm.validate import PARTS, ValidateResult, check_paths, write_batches, write_summary
from pipelines.ray_session import init_ray


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


def run(cfg: ValidateConfig, address: str | None = None, progress: bool = True) -> ValidateResult:
    start = time.perf_counter()
    sources = check_paths(cfg)
    init_ray(address)
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
