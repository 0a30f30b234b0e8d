"""`actprm evaluate`: ProcessBench F1 of a PRM exactly as the official script computes it, plus step AUROC and ECE.

    DIR/metrics.json          mean_f1, threshold, per subset error_acc / correct_acc / f1 / counts,
                              step AUROC and ECE (per subset and pooled), row counts, seconds
    DIR/predictions.parquet   predictions schema: one row per evaluated trajectory; every figure of
                              metrics.json can be recomputed from it (actprm.metrics.compute_metrics)

A trajectory truncated to the model's maximum length predicts from its scored steps; one whose first
step alone does not fit predicts -1, so every labelled item counts, as in the official script (both
are counted: rows_truncated, rows_unscorable). Invalid rows and rows without a label are counted,
never evaluated. The metric itself is actprm.metrics (README, "Evaluation").
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
from actprm.io.readers import iter_batches, known_rows
from actprm.io.subsets import Subset, resolve_subsets
from actprm.io.writers import StagedOutput, write_parquet_atomic
from actprm.metrics import f1_table
from actprm.progress import JobResult, RowCounts, progress_bar
from actprm.schemas import table_from_rows
from actprm.scoring import ScoringStats
from actprm.selection import model_calibration

PARTS = ["metrics.json", "predictions.parquet"]


@dataclass
class EvaluateResult(JobResult):
    metrics: dict[str, Any]
    output: Path

    def table(self) -> str:
        return f1_table(self.metrics["subsets"], self.metrics["mean_f1"])

    def render(self) -> str:
        return self.table() + "\n" + self.summary_line()

    def summary_line(self) -> str:
        m = self.metrics
        f1 = "n/a" if m["mean_f1"] is None else f"{m['mean_f1']:.3f}"
        n_f1 = sum(s["f1"] is not None for s in m["subsets"].values())
        swept = f" (swept on {m['threshold_from']})" if m["threshold_from"] else ""
        own = m.get("checkpoint_threshold")
        mine = "" if own is None else (f"; {'n/a' if own['mean_f1'] is None else format(own['mean_f1'], '.3f')} at "
                                       f"the checkpoint's threshold {own['threshold']:.2f}")
        return (f"evaluate: mean F1 {f1} over {n_f1} subsets ({m['counts']['rows_evaluated']} items) at threshold "
                f"{m['threshold']:.2f}{swept}{mine} in {m['seconds']:.1f}s -> {self.output}")


def _score_subset(subset: Subset, cfg: EvaluateConfig, model, tokenizer, device: str, batch_tokens: int,
                  stats: ScoringStats, bar) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for batch in iter_batches(subset.sources, limits=cfg.limits, step_separator=cfg.step_separator,
                              batch_rows=cfg.batch_rows):
        subset.counts.read += batch.n_read
        subset.counts.add_errors(batch.errors)
        labelled = [r for r in batch.valid if r["first_error_step"] is not None]
        subset.unlabelled += len(batch.valid) - len(labelled)
        subset.counts.valid += len(labelled)
        part = predict_rows(model, tokenizer, labelled, subset.name, batch_tokens=batch_tokens,
                            max_length=cfg.max_length, device=device, system_prompt=cfg.system_prompt, stats=stats)
        subset.truncated += part.truncated
        subset.unscorable += part.unscorable
        rows += part.rows
        bar.update(batch.n_read)
    return rows


def run(cfg: EvaluateConfig, progress: bool = True) -> EvaluateResult:
    start = time.perf_counter()
    subsets = resolve_subsets(cfg.data, cfg.format)
    if not cfg.output:
        raise UserError("no output: pass --output DIR")
    names = [s.name for s in subsets]
    if cfg.sweep_subset is not None and cfg.sweep_subset not in names:
        raise UserError(f"--sweep-subset {cfg.sweep_subset!r}: no such subset; the subsets are {', '.join(names)}")
    device, model, tokenizer, model_name, batch_tokens = load_for_scoring(cfg)
    stats = ScoringStats()
    with StagedOutput(cfg.output, PARTS, cfg.overwrite) as out:
        rows: list[dict[str, Any]] = []
        with progress_bar(known_rows([src for s in subsets for src in s.sources]), "evaluate", progress) as bar:
            for subset in subsets:
                rows += _score_subset(subset, cfg, model, tokenizer, device, batch_tokens, stats, bar)
        threshold, sweep = choose_threshold(rows, cfg.threshold, cfg.sweep_subset)
        metrics = evaluation_metrics(rows, names, threshold, sweep, model_calibration(model), model_name)
        write_parquet_atomic(table_from_rows(rows, "predictions"), out.path("predictions.parquet"))
        for s in subsets:
            metrics["subsets"][s.name] |= {
                "path": s.path, "rows_read": s.counts.read, "rows_invalid": s.counts.n_errors,
                "rows_unlabelled": s.unlabelled, "rows_truncated": s.truncated, "rows_unscorable": s.unscorable}
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
