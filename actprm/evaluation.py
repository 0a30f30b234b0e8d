"""Evaluation of a loaded scorer (ProcessBench's metric, PRMBench's): labelled rows → prediction rows → metrics.

The steps `actprm evaluate` (pipelines/evaluate.py, which adds reading, counting and writing) and
`actprm.evaluate` (the Python API, on rows in memory) both run; the metric itself is actprm.metrics.
A trajectory truncated to the model's maximum length predicts from its scored steps; one whose first
step alone does not fit predicts -1, so every labelled item counts, as in the official script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from actprm.errors import UserError
from actprm.metrics import (
    at_threshold,
    benchmark_metrics,
    best_threshold,
    checkpoint_threshold_metrics,
    prediction_row,
    processbench_rows,
)
from actprm.scoring import ScoringStats, score_trajectories


@dataclass
class SubsetPredictions:
    """Prediction rows (predictions schema) of one subset's labelled rows, and how many were cut short."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    truncated: int = 0  # later steps did not fit the model: predicted from the scored ones
    unscorable: int = 0  # the first step alone does not fit: predicts -1


def predict_rows(model, tokenizer, rows: Sequence[dict[str, Any]], subset: str, *, batch_tokens: int,
                 max_length: int | None, device: str, system_prompt: str | None = None,
                 stats: ScoringStats | None = None) -> SubsetPredictions:
    """Score labelled trajectory rows (canonical, `first_error_step` set) and make their prediction rows
    (the prediction at threshold 0.5; `evaluation_metrics` sets the one evaluated)."""
    out = SubsetPredictions()
    if not rows:
        return out
    results = score_trajectories(
        model, tokenizer, [r["problem"] for r in rows], [r["steps"] for r in rows],
        batch_tokens=batch_tokens, max_length=max_length, device=device, stats=stats,
        system_prompt=system_prompt)
    for row, res in zip(rows, results):
        if res.error is not None:
            out.unscorable += 1
            out.rows.append(prediction_row(row, subset, [], [], 0))
            continue
        out.truncated += res.n_scored_steps < len(row["steps"])
        out.rows.append(prediction_row(row, subset, res.mean.astype(np.float32).tolist(),
                                       res.std.astype(np.float32).tolist(), res.n_scored_steps))
    return out


def choose_threshold(rows: Sequence[dict[str, Any]], threshold: float, sweep_subset: str | None
                     ) -> tuple[float, dict[str, Any] | None]:
    """(threshold, sweep record): `threshold` as given, or, with `sweep_subset`, the one maximising that
    subset's F1 (actprm.metrics.best_threshold) and what the sweep found."""
    if sweep_subset is None:
        return threshold, None
    part = [r for r in processbench_rows(rows) if r["subset"] == sweep_subset]
    try:
        best_t, best = best_threshold([r["step_mean"] for r in part], [r["label"] for r in part])
    except ValueError:
        raise UserError(f"--sweep-subset {sweep_subset}: F1 is undefined there (it needs labelled "
                        f"items with an error and items without)") from None
    return best_t, {"subset": sweep_subset, "grid": [0.01, 0.99, 0.01], "f1": round(best, 6),
                    "ties": "closest to 0.5, then lower"}


def evaluation_metrics(rows: list[dict[str, Any]], names: Sequence[str], threshold: float,
                       sweep: dict[str, Any] | None, calibration: dict | None, model_name: str) -> dict[str, Any]:
    """Set every prediction row's `prediction` and `step_valid` at `threshold` and compute the metrics: mean_f1,
    threshold, threshold_from, model, per-subset figures (`names`: the subsets ProcessBench's metric scores),
    step AUROC / ECE, PRMBench's figures of its rows (`prmbench`, None without them), the F1 at the
    checkpoint's own threshold (`calibration`: the model's record) and the sweep record."""
    for r in rows:
        at_threshold(r, threshold)
    metrics = benchmark_metrics(rows, list(names))
    if metrics["prmbench"] is not None:
        metrics["prmbench"] = {"threshold": threshold, **metrics["prmbench"],
                               "samples_with_error_steps_past_end": sum(
                                   1 for r in rows if r.get("benchmark") == "prmbench" and r["error_steps"]
                                   and max(r["error_steps"]) > r["n_steps"])}
    own = checkpoint_threshold_metrics(rows, list(names), calibration)
    return {"mean_f1": metrics.pop("mean_f1"), "prmbench": metrics.pop("prmbench"), "threshold": threshold,
            "threshold_from": None if sweep is None else sweep["subset"], "model": model_name, **metrics,
            "checkpoint_threshold": own, "sweep": sweep}
