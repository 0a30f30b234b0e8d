"""The annotate job (in-process, no Ray): label every valid trajectory with an annotator.

    DIR/annotations/*.parquet   annotations schema: one row per valid input row, labelled or
                                failed with its reason (`error`)
    DIR/errors/*.parquet        errors schema: input rows that are not valid trajectories
    DIR/summary.json            counts, failures by kind, label distribution, tokens and cost

Read + validate (actprm.io; any trajectories table works, e.g. `actprm score`'s scored/
whose extra columns are ignored) → annotate batch by batch (actprm.judge) → write. Every
input row ends in exactly one of annotations/ or errors/. Outputs are staged: a crash
leaves DIR as it was.

Reruns: an --output that already holds an annotate run (DIR/annotations/) is replaced
without --overwrite. The verifier is deterministic and free, so a rerun writes identical
rows (latency_s aside); the OpenAI judge keeps every answer in DIR/judge_cache.sqlite (or
--cache) the moment it arrives, outside the staged tables, so a rerun after a kill resumes:
answered rows come from the cache, and only the rest are sent. Any other existing output
(e.g. a validate or score run's errors/ and summary.json) still needs --overwrite.

One event loop runs the whole job: rows of a batch are annotated concurrently (the judge's
limits hold across batches), the progress bar moves per finished row. The Ray recipe
(pipelines/annotate.py, `actprm annotate --ray`) spreads the rows over actors and shares
this module's counts, contract check, staged output and summary.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actprm.config import AnnotateConfig
from actprm.io.lock import output_lock
from actprm.io.readers import iter_batches, known_rows
from actprm.io.writers import ShardWriter, StagedOutput
from actprm.judge import Annotator, error_kind, make_annotator
from actprm.judge.budget import check_spend_settings as budget_settings
from actprm.judge.interrupt import GracefulInterrupt
from actprm.progress import RowCounts, progress_bar
from actprm.validate import check_paths

PARTS = ["annotations", "errors", "summary.json"]


@dataclass
class AnnotationCounts:
    """What the annotator did with the valid rows."""

    labelled: int = 0
    failed: Counter = field(default_factory=Counter)  # by error kind
    labels: Counter = field(default_factory=Counter)  # first_error_step -> rows
    agreement_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["error"] is None:
                self.labelled += 1
                self.labels[row["first_error_step"]] += 1
                self.agreement_sum += row["agreement"]
            else:
                self.failed[error_kind(row["error"])] += 1
            self.prompt_tokens += row["prompt_tokens"]
            self.completion_tokens += row["completion_tokens"]
            self.cost_usd += row["cost_usd"]

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, Any]:
        n = self.labelled
        return {
            "rows_labelled": n, "rows_failed": self.n_failed, "failures_by_kind": dict(self.failed.most_common()),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "share_no_error": self.labels[-1] / n if n else 0.0,
            "mean_agreement": self.agreement_sum / n if n else 0.0,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def _kinds(counter: Counter) -> str:
    return f" ({', '.join(f'{kind} {n}' for kind, n in counter.most_common())})" if counter else ""


@dataclass
class AnnotateResult:
    counts: RowCounts  # read / valid / invalid input rows by reason kind
    annotations: AnnotationCounts
    judge: str
    seconds: float
    output: Path
    judge_stats: Any = None  # the openai judge's JudgeStats (calls, cache hits, spend); None for others
    budget: dict[str, Any] | None = None  # SpendBudget.as_dict() when --max-spend / --max-calls was set

    def summary_line(self) -> str:
        a, c, j = self.annotations, self.counts, self.judge_stats
        paid = "" if j is None else (f", {j.answers} answers paid ({j.requests} requests, "
                                     f"{j.prompt_tokens + j.completion_tokens} tokens, ${j.cost_usd:.2f}), "
                                     f"{j.cached} from cache")
        stop = ""
        if j is not None and getattr(j, "usage_invalid", 0):
            stop += f"; {j.usage_invalid} replies without valid usage, charged at their worst case"
        if self.budget and self.budget["exhausted"]:
            stop += (f"; budget exhausted, {a.failed[BUDGET_KIND]} rows not annotated (rerun with a higher "
                     f"--max-spend/--max-calls to continue from the cache)")
        return (f"annotate: {c.read} rows, {a.labelled} labelled, {a.n_failed} failed{_kinds(a.failed)}, "
                f"{c.n_errors} invalid{_kinds(c.errors)}{paid} in {self.seconds:.1f}s -> {self.output}{stop}")


BUDGET_KIND = "budget exhausted"  # the error kind of rows the budget left unannotated


def check_spend_settings(cfg: AnnotateConfig) -> None:
    """--max-spend / --max-calls limit what the openai judge is paid; a user error where they cannot."""
    budget_settings(cfg)


def check_contract(rows: list[dict[str, Any]], out: list[dict[str, Any]], annotator: Annotator) -> None:
    """One annotation per input row with the same ids: a backend that breaks this is a bug."""
    if [r["id"] for r in rows] != [r["id"] for r in out]:
        raise RuntimeError(f"annotator {annotator.judge!r} returned {len(out)} rows for {len(rows)} "
                           "or changed their ids/order")


async def _annotate_all(cfg: AnnotateConfig, sources: list, annotator: Annotator, out: StagedOutput,
                        counts: RowCounts, done: AnnotationCounts, progress: bool) -> None:
    """The job's one event loop: batches are read, annotated (rows concurrently) and written in turn."""
    stats = getattr(annotator, "stats", None)

    def postfix() -> dict[str, Any]:
        shown: dict[str, Any] = {"labelled": done.labelled, "failed": done.n_failed}
        if stats is not None:
            shown.update(cached=stats.cached, tokens=stats.prompt_tokens + stats.completion_tokens,
                         spent=f"${stats.cost_usd:.2f}")
        return shown

    with ShardWriter(out.path("annotations"), "annotations", cfg.rows_per_shard) as annotations, \
         ShardWriter(out.path("errors"), "errors", cfg.rows_per_shard) as errors, \
         progress_bar(known_rows(sources), "annotate", progress) as bar:

        def on_row(row: dict[str, Any]) -> None:
            done.add([row])
            bar.update(1)
            bar.set_postfix(postfix(), refresh=False)

        try:
            async with GracefulInterrupt(annotator, cfg.interrupt_grace_s) as stop:  # Ctrl-C: drain, exit 130
                for batch in iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                                          batch_rows=cfg.batch_rows):
                    stop.check()
                    rows = await annotator.annotate_async(batch.valid, on_row) if batch.valid else []
                    stop.check()
                    check_contract(batch.valid, rows, annotator)
                    annotations.add_rows(rows)
                    errors.add_rows(batch.errors)
                    counts.read += batch.n_read
                    counts.valid += len(batch.valid)
                    counts.add_errors(batch.errors)
                    bar.update(batch.n_read - len(batch.valid))
        finally:
            await annotator.aclose()


def staged_output(cfg: AnnotateConfig) -> StagedOutput:
    """The job's staged output; an earlier annotate run in it (DIR/annotations/) is replaced."""
    rerun = (Path(cfg.output) / "annotations").is_dir()
    return StagedOutput(cfg.output, PARTS, cfg.overwrite or rerun)


def write_summary(path: Path, cfg: AnnotateConfig, sources: list, judge: str, prompt_version: str,
                  counts: RowCounts, done: AnnotationCounts, stats: Any, seconds: float,
                  budget: dict[str, Any] | None = None) -> None:
    """DIR/summary.json: input counts, annotation counts, the judge's calls and spend (`stats`: JudgeStats),
    the spend limits and what they let through (`budget`: SpendBudget.as_dict())."""
    summary = {
        "files": [str(s.path) for s in sources], "backend": cfg.backend, "judge": judge,
        "prompt_version": prompt_version, "samples": cfg.samples,
        **counts.as_dict(), **done.as_dict(), **(stats.as_dict() if stats is not None else {}),
        **({"budget": budget} if budget is not None else {}),
        "seconds": round(seconds, 3), "rows_per_second": counts.read / seconds if seconds else 0.0,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")


def run_annotate(cfg: AnnotateConfig, progress: bool = True, annotator: Annotator | None = None) -> AnnotateResult:
    """Annotate every valid row of `cfg.input` into `cfg.output` (`annotator`: default from the config)."""
    start = time.perf_counter()
    sources = check_paths(cfg)
    check_spend_settings(cfg)
    mine = annotator is None
    annotator = annotator or make_annotator(cfg)  # its cache, if any, is locked while open
    counts, done = RowCounts(), AnnotationCounts()
    try:
        with output_lock(cfg.output), staged_output(cfg) as out:  # one run per output at a time
            asyncio.run(_annotate_all(cfg, sources, annotator, out, counts, done, progress))
            seconds = time.perf_counter() - start
            stats = getattr(annotator, "stats", None)
            spend = getattr(annotator, "budget", None)
            budget = spend.as_dict() if spend is not None else None
            write_summary(out.path("summary.json"), cfg, sources, annotator.judge, annotator.prompt_version,
                          counts, done, stats, seconds, budget)
    finally:
        if mine and getattr(annotator, "cache", None) is not None:
            annotator.cache.close()  # and its lock
    return AnnotateResult(counts, done, annotator.judge, seconds, Path(cfg.output), stats, budget)
