"""`actprm evaluate`: ProcessBench F1 and PRMBench's PRMScore of a PRM exactly as the official scorers compute
them, plus step AUROC and ECE.

    DIR/metrics.json          mean_f1, threshold, per subset error_acc / correct_acc / f1 / counts,
                              step AUROC and ECE (per subset and pooled), row counts, seconds; under
                              `prmbench` (PRMBench files given) its figures per class and overall
    DIR/predictions.parquet   predictions schema: one row per evaluated trajectory; every figure of
                              metrics.json can be recomputed from it (actprm.metrics.benchmark_metrics)
    DIR/errors.parquet        errors schema: every row refused, with its reason

A trajectory truncated to the model's maximum length predicts from its scored steps; one whose first
step alone does not fit predicts -1, so every labelled item counts, as in the official script (both
are counted: rows_truncated, rows_unscorable). Invalid rows and rows without a label are counted,
never evaluated. The metric itself is actprm.metrics (docs/evaluation.md, "Evaluation").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actprm.checkpoint import load_for_scoring
from actprm.config import EvaluateConfig
from actprm.errors import UserError
from actprm.evaluation import choose_threshold, evaluation_metrics, predict_rows
from actprm.io.readers import known_rows
from actprm.io.subsets import Subset, labelled_batches, resolve_subsets
from actprm.io.writers import StagedOutput, write_parquet_atomic
from actprm.metrics import benchmark_tables
from actprm.progress import JobResult, RowCounts, progress_bar
from actprm.schemas import table_from_rows
from actprm.scoring import ScoringStats
from actprm.selection import model_calibration

PARTS = ["metrics.json", "predictions.parquet", "errors.parquet"]


@dataclass
class EvaluateResult(JobResult):
    metrics: dict[str, Any]
    output: Path

    def details(self) -> str:
        return benchmark_tables(self.metrics)

    def summary_line(self) -> str:
        m = self.metrics
        f1 = "n/a" if m["mean_f1"] is None else f"{m['mean_f1']:.3f}"
        n_f1 = sum(s["f1"] is not None for s in m["subsets"].values())
        swept = f" (swept on {m['threshold_from']})" if m["threshold_from"] else ""
        own = m.get("checkpoint_threshold")
        mine = "" if own is None else (f"; {'n/a' if own['mean_f1'] is None else format(own['mean_f1'], '.3f')} at "
                                       f"the checkpoint's threshold {own['threshold']:.2f}")
        prm = m["prmbench"]
        prm = "" if not prm else f"; PRMBench PRMScore {prm['prmscore']:.3f} over {prm['n']} samples"
        return (f"evaluate: mean F1 {f1} over {n_f1} subsets{prm} ({m['counts']['rows_evaluated']} items) at "
                f"threshold {m['threshold']:.2f}{swept}{mine} in {m['seconds']:.1f}s -> {self.output}")


def _score_subset(subset: Subset, cfg: EvaluateConfig, model, tokenizer, device: str, batch_tokens: int,
                  stats: ScoringStats, bar, seen: set[str], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in labelled_batches(subset, limits=cfg.limits, step_separator=cfg.step_separator,
                                  batch_rows=cfg.batch_rows, seen=seen):
        subset.counts.read += batch.n_read
        subset.counts.add_errors(batch.errors)
        errors += batch.errors
        labelled = batch.rows
        subset.unlabelled += batch.unlabelled
        subset.counts.valid += len(labelled)
        part = predict_rows(model, tokenizer, labelled, subset.name, batch_tokens=batch_tokens,
                            max_length=cfg.max_length, device=device, system_prompt=cfg.system_prompt, stats=stats)
        subset.truncated += part.truncated
        subset.unscorable += part.unscorable
        rows += part.rows
        bar.update(batch.n_read)
    return rows


def _subsets(cfg: EvaluateConfig) -> list[Subset]:
    """The --data subsets, their benchmark detected from the files or as --benchmark says."""
    if cfg.benchmark == "prmbench" and cfg.format not in ("auto", "prmbench"):
        raise UserError(f"--benchmark prmbench reads PRMBench's rows; --format {cfg.format} contradicts it")
    subsets = resolve_subsets(cfg.data, "prmbench" if cfg.benchmark == "prmbench" else cfg.format)
    if cfg.benchmark == "processbench":
        for s in subsets:
            if s.benchmark == "prmbench":
                raise UserError(f"--benchmark processbench: {s.path} holds PRMBench's rows (drop the flag to "
                                f"score each set by its own benchmark)")
    return subsets


def run(cfg: EvaluateConfig, progress: bool = True) -> EvaluateResult:
    start = time.perf_counter()
    subsets = _subsets(cfg)
    if not cfg.output:
        raise UserError("no output: pass --output DIR")
    names = [s.name for s in subsets if s.benchmark == "processbench"]
    if cfg.sweep_subset is not None and cfg.sweep_subset not in names:
        raise UserError(f"--sweep-subset {cfg.sweep_subset!r}: no such subset scored by ProcessBench's metric; they are "
                        f"{', '.join(names) or 'none'}")
    device, model, tokenizer, model_name, batch_tokens = load_for_scoring(cfg)
    stats = ScoringStats()
    with StagedOutput(cfg.output, PARTS, cfg.overwrite) as out:
        rows: list[dict[str, Any]] = []
        error_rows: list[dict[str, Any]] = []
        seen: set[str] = set()  # PRMBench sample ids, one of each over all files
        with progress_bar(known_rows([src for s in subsets for src in s.sources]), "evaluate", progress) as bar:
            for subset in subsets:
                rows += _score_subset(subset, cfg, model, tokenizer, device, batch_tokens, stats, bar, seen,
                                      error_rows)
        threshold, sweep = choose_threshold(rows, cfg.threshold, cfg.sweep_subset)
        metrics = evaluation_metrics(rows, names, threshold, sweep, model_calibration(model), model_name)
        write_parquet_atomic(table_from_rows(rows, "predictions"), out.path("predictions.parquet"))
        write_parquet_atomic(table_from_rows(error_rows, "errors"), out.path("errors.parquet"))
        files = {s.name: {"path": s.path, "rows_read": s.counts.read, "rows_invalid": s.counts.n_errors,
                          "rows_unlabelled": s.unlabelled, "rows_truncated": s.truncated,
                          "rows_unscorable": s.unscorable} for s in subsets}
        for name in names:
            metrics["subsets"][name] |= files[name]
        if metrics["prmbench"] is not None:
            metrics["prmbench"]["files"] = {s.name: files[s.name] for s in subsets if s.benchmark == "prmbench"}
        errors = RowCounts()
        for s in subsets:
            errors.merge(s.counts)
        seconds = time.perf_counter() - start
        metrics |= {
            "counts": {"rows_read": errors.read, "rows_invalid": errors.n_errors,
                       "invalid_by_kind": dict(errors.errors.most_common()),
                       "rows_unlabelled": sum(s.unlabelled for s in subsets), "rows_evaluated": len(rows),
                       "rows_truncated": sum(s.truncated for s in subsets),
                       "rows_unscorable": sum(s.unscorable for s in subsets)},
            "device": device, "seconds": round(seconds, 3), "scoring": stats.as_dict(),
        }
        out.path("metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return EvaluateResult(metrics, Path(cfg.output))
