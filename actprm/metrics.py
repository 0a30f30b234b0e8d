"""ProcessBench F1 exactly as the official script computes it, step AUROC and ECE: pure NumPy.

**The metric** (QwenLM/ProcessBench), per subset: ``error_acc`` = share of items with label != -1
whose prediction equals the label exactly; ``correct_acc`` = share of items with label == -1
predicted -1; ``f1 = 2 * error_acc * correct_acc / (error_acc + correct_acc)`` (0 when both are 0);
``mean_f1`` = the unweighted mean of the subsets' F1. A side with no items has no accuracy (None)
and then the subset has no F1; ``mean_f1`` is over the subsets that have one.

**A PRM's prediction** is the first step whose ensemble mean is *strictly* below the threshold
(0.5 by default), else -1. Means are compared in float64 as stored, so recomputing from
predictions.parquet gives the same predictions bit for bit.

**Threshold sweep**, as ActivePRM does: the threshold maximising one subset's F1 over the grid
0.01 ... 0.99, ties to the threshold closest to 0.5, then the lower one.

**Step metrics**: the ActPRM training labels (:func:`step_labels`) against the ensemble mean of the
scored steps: AUROC (rank-based, ties averaged) and ECE (10 equal-width bins, weighted by bin size).
docs/evaluation.md, "Evaluation", has the rest (truncated and unscorable rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from actprm import prmbench, uncertainty

#: The sweep's thresholds: 0.01, 0.02, ..., 0.99 (exact two-decimal floats).
THRESHOLD_GRID = np.round(np.arange(1, 100) / 100, 2)

# --------------------------------------------------------------------------- the metric


def _means(step_means) -> np.ndarray:
    return np.asarray(step_means, dtype=np.float64).reshape(-1)


def predict_first_error(step_means, threshold: float = 0.5) -> int:
    """The first step whose mean is < threshold (strictly), -1 if none (or no steps)."""
    return uncertainty.predicted_first_error(_means(step_means), threshold)


def predictions_at(step_means_list: Sequence, threshold: float = 0.5) -> np.ndarray:
    """:func:`predict_first_error` of every trajectory, as an int64 array."""
    return np.array([predict_first_error(m, threshold) for m in step_means_list], dtype=np.int64)


def _f1(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def processbench_scores(labels, predictions) -> dict[str, Any]:
    """ProcessBench's figures for one subset: error_acc, correct_acc, f1 (fractions), n, n_error, n_correct.

    An accuracy over no items (and then f1) is None.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    error, correct = y != -1, y == -1
    error_acc = float(np.mean(p[error] == y[error])) if error.any() else None
    correct_acc = float(np.mean(p[correct] == -1)) if correct.any() else None
    return {"error_acc": error_acc, "correct_acc": correct_acc, "f1": _f1(error_acc, correct_acc),
            "n": int(y.size), "n_error": int(error.sum()), "n_correct": int(correct.sum())}


def mean_f1(scores: Sequence[dict[str, Any]]) -> float | None:
    """Unweighted mean of the subsets' F1 (those that have one); None if none has."""
    f1s = [s["f1"] for s in scores if s["f1"] is not None]
    return float(np.mean(f1s)) if f1s else None


# --------------------------------------------------------------------------- step metrics


def step_labels(label: int, n_steps: int) -> np.ndarray:
    """ActPRM's step labels: 1 before the earliest error, 0 at it, later steps left out; all 1 if label == -1."""
    if label == -1:
        return np.ones(n_steps, dtype=np.int8)
    if not 0 <= label < n_steps:
        raise ValueError(f"label {label} is outside -1..{n_steps - 1} for {n_steps} steps")
    out = np.ones(label + 1, dtype=np.int8)
    out[label] = 0
    return out


def auroc(scores, labels) -> float | None:
    """Area under the ROC curve of `scores` for `labels` (1 positive, 0 negative).

    Rank-based (Mann-Whitney U) with tied scores given their average rank, so a tie between a
    positive and a negative counts one half. None when either class is missing.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # 1-based average ranks
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def expected_calibration_error(probs, labels, bins: int = 10) -> float | None:
    """ECE: sum over equal-width bins of (bin size / N) * |mean label - mean prob| in the bin.

    Bin i holds probabilities with floor(p * bins) == i (1.0 goes to the last bin). None for no items.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"{p.size} probabilities but {y.size} labels")
    if bins < 1:
        raise ValueError("bins must be >= 1")
    if p.size == 0:
        return None
    if ((p < 0) | (p > 1)).any() or np.isnan(p).any():
        raise ValueError("probabilities must be in [0, 1]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(index, weights=y, minlength=bins) - np.bincount(index, weights=p, minlength=bins))
    return float(gap.sum() / p.size)  # sum_b n_b/N * |sum_y/n_b - sum_p/n_b|


# --------------------------------------------------------------------------- threshold sweep


def f1_by_threshold(step_means_list: Sequence, labels, grid=THRESHOLD_GRID) -> np.ndarray:
    """ProcessBench F1 of one subset at each threshold of `grid` (NaN where undefined)."""
    grid = np.asarray(grid, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.empty((grid.size, y.size), dtype=np.int64)
    for j, m in enumerate(step_means_list):
        # the first step below t is the first whose running minimum is below t: with the running
        # minimum non-increasing, that is the number of running minima >= t (n: none below)
        running_min = np.minimum.accumulate(_means(m)) if len(m) else np.zeros(0)
        k = (running_min[None, :] >= grid[:, None]).sum(axis=1)
        preds[:, j] = np.where(k < running_min.size, k, -1)
    out = np.full(grid.size, np.nan)
    for i in range(grid.size):
        f1 = processbench_scores(y, preds[i])["f1"]
        out[i] = np.nan if f1 is None else f1
    return out


def best_threshold(step_means_list: Sequence, labels, grid=THRESHOLD_GRID, prefer: float = 0.5) -> tuple[float, float]:
    """(threshold, F1): the grid threshold maximising the subset's F1; ties -> closest to `prefer`, then lower."""
    grid = np.asarray(grid, dtype=np.float64)
    f1 = f1_by_threshold(step_means_list, labels, grid)
    if np.isnan(f1).all():
        raise ValueError("F1 is undefined: the subset needs items with an error and items without")
    best = np.nanmax(f1)
    tied = grid[f1 == best]
    choice = min(tied, key=lambda t: (round(abs(t - prefer), 9), t))  # rounded: 0.49 and 0.51 tie exactly
    return float(choice), float(best)


# --------------------------------------------------------------------------- metrics from predictions


def _step_arrays(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(step means, step labels) of every labelled scored step: the scored prefix cut at the earliest error."""
    scores, labels = [], []
    for r in rows:
        labelled = step_labels(r["label"], r["n_steps"])[: r["n_scored_steps"]]
        scores.append(np.asarray(r["step_mean"], dtype=np.float64)[: labelled.size])
        labels.append(labelled)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=np.int8)
    return np.concatenate(scores), np.concatenate(labels)


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def compute_metrics(rows: Sequence[dict[str, Any]], subsets: Sequence[str] | None = None) -> dict[str, Any]:
    """Every figure of metrics.json from prediction rows (predictions schema, as dicts).

    `subsets` fixes the order (default: order of first appearance). Uses each row's `prediction`
    as is; recompute it with :func:`predict_first_error` for another threshold.
    """
    names = list(subsets) if subsets is not None else list(dict.fromkeys(r["subset"] for r in rows))
    per: dict[str, Any] = {}
    exact: list[dict[str, Any]] = []  # the unrounded scores: the mean is of these, rounded once
    for name in names:
        part = [r for r in rows if r["subset"] == name]
        scores = processbench_scores([r["label"] for r in part], [r["prediction"] for r in part])
        exact.append(scores)
        s, y = _step_arrays(part)
        per[name] = {**{k: _round(v) if k.endswith(("acc", "f1")) else v for k, v in scores.items()},
                     "step_auroc": _round(auroc(s, y)), "step_ece": _round(expected_calibration_error(s, y)),
                     "n_steps_evaluated": int(y.size)}
    s, y = _step_arrays(rows)
    return {"mean_f1": _round(mean_f1(exact)), "subsets": per,
            "step_auroc": _round(auroc(s, y)), "step_ece": _round(expected_calibration_error(s, y)),
            "n_steps_evaluated": int(y.size)}


def prediction_row(row: dict[str, Any], subset: str, step_mean: Sequence[float], step_std: Sequence[float],
                   n_scored_steps: int, threshold: float = 0.5) -> dict[str, Any]:
    """A predictions-table row (data_schemas/predictions.yaml) of a labelled trajectory and its scores
    (no scored step: a trajectory whose first step does not fit the model, predicting -1). A PRMBench
    sample (actprm.io.subsets.labelled_batches) keeps its class and error steps."""
    out = {"id": row["id"], "subset": subset, "benchmark": row.get("benchmark", "processbench"),
           "label": row["first_error_step"], "step_mean": list(step_mean), "step_std": list(step_std),
           "n_scored_steps": int(n_scored_steps), "n_steps": len(row["steps"]),
           "classification": row.get("classification"), "error_steps": row.get("error_steps")}
    return at_threshold(out, threshold)


def at_threshold(row: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Set a prediction row's threshold-dependent columns: `prediction` (first step < threshold) and
    `step_valid` (each step > threshold, PRMBench's validity labels)."""
    row["prediction"] = predict_first_error(row["step_mean"], threshold)
    row["step_valid"] = prmbench.step_validity(_means(row["step_mean"]), threshold)
    return row


def processbench_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prediction rows ProcessBench's metric scores (every benchmark but PRMBench)."""
    return [r for r in rows if r.get("benchmark", "processbench") == "processbench"]


def benchmark_metrics(rows: Sequence[dict[str, Any]], subsets: Sequence[str]) -> dict[str, Any]:
    """ProcessBench's figures (:func:`compute_metrics`) over its rows and `subsets` (ProcessBench's), and under `prmbench` the
    PRMBench figures (actprm.prmbench.prmbench_metrics) of the PRMBench rows, None when there are none."""
    prm = [r for r in rows if r.get("benchmark") == "prmbench"]
    out = compute_metrics(processbench_rows(rows), subsets)
    out["prmbench"] = prmbench.prmbench_metrics(prm) if prm else None
    return out


def benchmark_tables(m: dict[str, Any], extra: Sequence[str] = ()) -> str:
    """The tables a run prints: ProcessBench's (:func:`f1_table`, when it scored subsets) and PRMBench's
    (actprm.prmbench.prmbench_table, when it scored PRMBench rows); `m` holds `subsets`, `mean_f1`, `prmbench`."""
    parts = [f1_table(m["subsets"], m["mean_f1"], extra)] if m["subsets"] else []
    if m["prmbench"]:
        parts.append(prmbench.prmbench_table(m["prmbench"]))
    return "\n\n".join(parts)


def f1_table(subsets: dict[str, dict[str, Any]], mean: float | None, extra: Sequence[str] = ()) -> str:
    """Subset, n, error_acc, correct_acc, F1 in percent (as ProcessBench papers print them), the `extra`
    integer columns, and a mean row (`mean`: the mean F1)."""
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    def avg(key: str) -> float | None:
        values = [m[key] for m in subsets.values() if m[key] is not None]
        return float(np.mean(values)) if values else None

    width = max([len("subset"), len("mean"), *(len(n) for n in subsets)])
    rows = [("subset", "n", "error_acc", "correct_acc", "F1", *extra)]
    rows += [(name, str(m["n"]), pct(m["error_acc"]), pct(m["correct_acc"]), pct(m["f1"]),
              *(str(m[e]) for e in extra)) for name, m in subsets.items()]
    rows.append(("mean", str(sum(m["n"] for m in subsets.values())), pct(avg("error_acc")), pct(avg("correct_acc")),
                 pct(mean), *(str(sum(m[e] for m in subsets.values())) for e in extra)))
    widths = [width, 6, 9, 11, 5, *(max(6, len(e)) for e in extra)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def checkpoint_threshold_metrics(rows: list[dict[str, Any]], names: list[str], calibration: dict | None
                                 ) -> dict[str, Any] | None:
    """ProcessBench F1 at the checkpoint's own decision threshold (chosen on held-out labels when it was
    trained; docs/ensemble-and-rule.md "The rule and its calibration"), beside the benchmark's fixed threshold: mean F1 and per
    subset F1 / accuracies. None for a model without one."""
    if not calibration:
        return None
    t = float(calibration["threshold"])
    m = compute_metrics([r | {"prediction": predict_first_error(r["step_mean"], t)} for r in processbench_rows(rows)],
                        names)
    return {"threshold": t, "mean_f1": m["mean_f1"],
            "subsets": {k: {f: v.get(f) for f in ("f1", "error_acc", "correct_acc")} for k, v in m["subsets"].items()}}
