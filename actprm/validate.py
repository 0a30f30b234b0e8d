"""The validate job: read a corpus in any format, write valid rows and error rows.

    DIR/valid/*.parquet    trajectories schema
    DIR/errors/*.parquet   errors schema (reason + the original row)
    DIR/summary.json       counts

Every input row lands in exactly one of valid/ or errors/. A bad file stops the job
before anything is written (pre-flight), or, if it breaks mid-way, the staged output
is discarded: DIR is left as it was. `pipelines/validate.py` runs the same steps on Ray.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from actprm.config import ValidateConfig
from actprm.errors import UserError
from actprm.io.readers import Batch, SourceFile, iter_batches, known_rows, open_corpus
from actprm.io.writers import ShardWriter, StagedOutput
from actprm.progress import RowCounts, progress_bar

PARTS = ["valid", "errors", "summary.json"]


@dataclass
class ValidateResult:
    counts: RowCounts
    n_files: int
    seconds: float
    output: Path

    def summary_line(self) -> str:
        c = self.counts
        rate = c.read / self.seconds if self.seconds > 0 else 0.0
        return (f"validate: {c.read} rows read from {self.n_files} files, {c.valid} valid, "
                f"{c.errors_text()} in {self.seconds:.1f}s ({rate:,.0f} rows/s) -> {self.output}")


def require_input_output(cfg: ValidateConfig) -> None:
    """The input and output flags are there (a user error otherwise)."""
    if not cfg.input:
        raise UserError("no input: pass --input PATH (a file, a directory or a glob)")
    if not cfg.output:
        raise UserError("no output: pass --output DIR")


def check_paths(cfg: ValidateConfig) -> list[SourceFile]:
    """The input and output flags are there, and every input file passes pre-flight."""
    require_input_output(cfg)
    return open_corpus(cfg.input, cfg.format)


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


def run_validate(cfg: ValidateConfig, progress: bool = True) -> ValidateResult:
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
