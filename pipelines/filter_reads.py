"""The read side of `actprm filter` (pipelines/filter.py): the Ray tasks that read input files.

Kept apart from the scoring actors and free of torch, so that a read worker holds pyarrow and the
readers only (~0.1 GB RSS instead of ~0.3 GB with torch loaded): the job's memory is the actors', the
driver's and a few of these.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray

from actprm import hygiene
from actprm.config import FilterConfig
from actprm.io.readers import (
    NoDuplicateCheck,
    PlannedDuplicates,
    SourceFile,
    iter_file_batches,
)
from actprm.sample import BottomK
from actprm.schemas import arrow_schema, row_json

READ_TASK_CPUS = 0.5  # per read task: with a CPU left beside the actors, two files stream at a time


def read_task_cpus(actor_cpus: float) -> float:
    """CPUs of a read task: READ_TASK_CPUS, or just under it when the actors reserve exactly that (with equal
    resources Ray fuses the reads into the actors, and a batch of files would wait on one actor task)."""
    return READ_TASK_CPUS if actor_cpus != READ_TASK_CPUS else READ_TASK_CPUS - 0.01


# rows between stages: the scored columns (all nullable) + where each row came from and, for
# rows that go to errors, why
_ORIGIN = [pa.field("_file", pa.int32()), pa.field("_row_index", pa.int64()), pa.field("_source_file", pa.string()),
           pa.field("_error", pa.string()), pa.field("_row_json", pa.string())]
TRANSPORT = pa.schema([f.with_nullable(True) for f in arrow_schema("scored")] + _ORIGIN)


# ------------------------------------------------------------------ stage functions


@ray.remote
def read_ids(source: SourceFile, cfg: FilterConfig, eval_paths: list[str]) -> dict | str:
    """What the driver needs of one file, or why the file failed: `ids` (row_index, id) of the rows that pass
    the per-row checks, `n_read`, `hygiene` (actprm.hygiene.FileHygiene: keys, contamination) and, for
    --target-rate, `sample` (its rows' bottom-k by id hash)."""
    ids: list[tuple[int, str]] = []
    n_read = 0
    sample = BottomK(cfg.calibration_sample if cfg.target_rate is not None else 0, cfg.seed)

    def read() -> Iterator:
        nonlocal n_read
        for batch in iter_file_batches([source], 0, ids=NoDuplicateCheck(), limits=cfg.limits,
                                       step_separator=cfg.step_separator, batch_rows=cfg.batch_rows):
            ids.extend(zip(batch.valid_index, (row["id"] for row in batch.valid)))
            n_read += batch.n_read
            sample.add(batch.valid)
            yield batch

    try:
        info = hygiene.file_hygiene(read(), cfg, eval_paths)
    except Exception as exc:  # a file that breaks part-way: reported, skipped
        return f"unreadable file: {' '.join(str(exc).split())[:300]}"
    return {"ids": ids, "n_read": n_read, "hygiene": info, "sample": sample}


def read_rows(batch: dict[str, np.ndarray], sources: list[SourceFile], plans: list[dict],
              removals: list[dict[int, str]], cfg: FilterConfig) -> Iterator[pa.Table]:
    """Ray Data stage: one input file (its index) -> its rows, validated, in TRANSPORT tables; the rows the
    hygiene rules remove (`removals`) go on as error rows with their reason."""
    for file_index in batch["file_index"].tolist():
        removed = removals[file_index]
        for b in iter_file_batches(sources, file_index, ids=PlannedDuplicates(plans[file_index]), limits=cfg.limits,
                                   step_separator=cfg.step_separator, batch_rows=cfg.batch_rows):
            origin = {"_file": file_index, "_source_file": b.source_file}
            rows = [row | origin | {"_row_index": i} if i not in removed else
                    origin | {"id": row["id"], "_row_index": i, "_error": removed[i], "_row_json": row_json(row)}
                    for row, i in zip(b.valid, b.valid_index)]
            rows += [origin | {"id": e["id"], "_row_index": e["row_index"], "_error": e["reason"],
                               "_row_json": e["row_json"]} for e in b.errors]
            yield pa.Table.from_pylist(rows, schema=TRANSPORT)
