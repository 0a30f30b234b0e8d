"""The evaluate job: ProcessBench F1 of a PRM exactly as the official script computes it, plus step AUROC and ECE.

    DIR/metrics.json          mean_f1, threshold, per subset error_acc / correct_acc / f1 / counts,
                              step AUROC and ECE (per subset and pooled), row counts, seconds
    DIR/predictions.parquet   predictions schema: one row per evaluated trajectory (id, subset, label,
                              prediction, step_mean, step_std, n_scored_steps, n_steps); every figure of
                              metrics.json can be recomputed from it (:func:`compute_metrics`)

**The metric** (QwenLM/ProcessBench, code/run_eval_*.py), per subset: ``error_acc`` = share of
items with label != -1 whose prediction equals the label exactly; ``correct_acc`` = share of items
with label == -1 predicted -1; ``f1 = 2 * error_acc * correct_acc / (error_acc + correct_acc)``
(0 when both are 0); ``mean_f1`` = the unweighted mean of the subsets' F1. Fractions in [0, 1]
here; papers print them x100. A side with no items has no accuracy (None here, NaN in the official
script) and then the subset has no F1; ``mean_f1`` is over the subsets that have one.

**A PRM's prediction** is the first step whose ensemble mean is *strictly* below the threshold
(0.5 by default), else -1. Means are compared as stored (float32 values, compared in float64), so
recomputing from predictions.parquet gives the same predictions bit for bit. A trajectory
truncated to the model's maximum length predicts from its scored steps (a prefix): if none of them
is below the threshold it predicts -1, even when the labelled error lies in the unscored part.
A trajectory whose first step alone does not fit is kept with no scored step and predicts -1, so
every labelled item counts, as in the official script; both cases are counted
(``rows_truncated``, ``rows_unscorable``).

**Threshold sweep** (``sweep_subset``), as ActivePRM does: the threshold maximising one subset's F1
over the grid 0.01, 0.02, ..., 0.99 is applied to every subset. Ties go to the threshold closest
to 0.5, then to the lower one.

**Step metrics**: the ActPRM training labels (:func:`step_labels`: steps before the earliest error 1,
the earliest error 0, later steps not labelled; all 1 when label -1) against the ensemble mean of the
scored steps: AUROC (rank-based, ties averaged) and ECE (10 equal-width bins, weighted by bin size).

Skipped rows: invalid rows (any reader error: duplicate id within a subset, empty steps, ...) and rows
without a label (first_error_step null) are counted, never evaluated. Every metric function is pure
NumPy and usable without the CLI.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from actprm import uncertainty
from actprm.config import EvaluateConfig
from actprm.errors import UserError
from actprm.io.readers import SourceFile, iter_batches, known_rows, open_corpus
from actprm.io.writers import StagedOutput, write_parquet_atomic
from actprm.progress import RowCounts, progress_bar
from actprm.schemas import table_from_rows
from actprm.scoring import ScoringStats, score_trajectories

__all__ = [
    "THRESHOLD_GRID",
    "EvaluateResult",
    "auroc",
    "best_threshold",
    "compute_metrics",
    "expected_calibration_error",
    "f1_by_threshold",
    "mean_f1",
    "predict_first_error",
    "predictions_at",
    "processbench_scores",
    "run_evaluate",
    "step_labels",
]

#: The sweep's thresholds: 0.01, 0.02, ..., 0.99 (exact two-decimal floats).
THRESHOLD_GRID = np.round(np.arange(1, 100) / 100, 2)
PARTS = ["metrics.json", "predictions.parquet"]


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
    for name in names:
        part = [r for r in rows if r["subset"] == name]
        scores = processbench_scores([r["label"] for r in part], [r["prediction"] for r in part])
        s, y = _step_arrays(part)
        per[name] = {**{k: _round(v) if k.endswith(("acc", "f1")) else v for k, v in scores.items()},
                     "step_auroc": _round(auroc(s, y)), "step_ece": _round(expected_calibration_error(s, y)),
                     "n_steps_evaluated": int(y.size)}
    s, y = _step_arrays(rows)
    return {"mean_f1": _round(mean_f1(list(per.values()))), "subsets": per,
            "step_auroc": _round(auroc(s, y)), "step_ece": _round(expected_calibration_error(s, y)),
            "n_steps_evaluated": int(y.size)}


# --------------------------------------------------------------------------- the job


@dataclass
class Subset:
    name: str
    path: str
    sources: list[SourceFile]
    counts: RowCounts = field(default_factory=RowCounts)
    unlabelled: int = 0
    truncated: int = 0
    unscorable: int = 0


def _expand(data: list[str]) -> list[str]:
    paths: list[str] = []
    for item in data:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"{item}: no file matches this pattern")
            paths += matches
        else:
            paths.append(item)
    return paths


def subset_name(path: str) -> str:
    """A file's stem before its first dot (`gsm8k.json` -> gsm8k), a directory's name."""
    p = Path(path)
    if p.is_dir():
        return p.name if p.name not in ("", ".", "..") else p.resolve().name
    return p.name.split(".")[0]


def resolve_subsets(cfg: EvaluateConfig) -> list[Subset]:
    """One subset per --data path (a glob: per match), each pre-flighted; names must be unique."""
    if not cfg.data:
        raise UserError("no data: pass --data PATH... (one file or directory per subset)")
    subsets: dict[str, Subset] = {}
    for path in _expand(cfg.data):
        if not Path(path).exists():
            raise UserError(f"{path}: no such file or directory")
        name = subset_name(path)
        if name in subsets:
            raise UserError(f"--data {subsets[name].path} and {path} are both subset {name!r} "
                            f"(a subset is named by its file stem or directory name); rename one")
        subsets[name] = Subset(name, path, open_corpus([path], cfg.format))
    return list(subsets.values())


@dataclass
class EvaluateResult:
    metrics: dict[str, Any]
    output: Path

    def table(self) -> str:
        """Subset, n, error_acc, correct_acc, F1 in percent (as ProcessBench papers print them), and a mean row."""
        def pct(x):
            return "-" if x is None else f"{100 * x:.1f}"

        subsets = self.metrics["subsets"]
        width = max([len("subset"), len("mean"), *(len(n) for n in subsets)])
        lines = [f"{'subset':<{width}}  {'n':>6}  {'error_acc':>9}  {'correct_acc':>11}  {'F1':>5}"]
        for name, m in subsets.items():
            lines.append(f"{name:<{width}}  {m['n']:>6}  {pct(m['error_acc']):>9}  {pct(m['correct_acc']):>11}  "
                         f"{pct(m['f1']):>5}")

        def avg(key):
            values = [m[key] for m in subsets.values() if m[key] is not None]
            return float(np.mean(values)) if values else None

        total = sum(m["n"] for m in subsets.values())
        lines.append(f"{'mean':<{width}}  {total:>6}  {pct(avg('error_acc')):>9}  {pct(avg('correct_acc')):>11}  "
                     f"{pct(self.metrics['mean_f1']):>5}")
        return "\n".join(lines)

    def summary_line(self) -> str:
        m = self.metrics
        f1 = "n/a" if m["mean_f1"] is None else f"{m['mean_f1']:.3f}"
        n_f1 = sum(s["f1"] is not None for s in m["subsets"].values())
        swept = f" (swept on {m['threshold_from']})" if m["threshold_from"] else ""
        return (f"evaluate: mean F1 {f1} over {n_f1} subsets ({m['counts']['rows_evaluated']} items) at threshold "
                f"{m['threshold']:.2f}{swept} in {m['seconds']:.1f}s -> {self.output}")


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
        results = score_trajectories(
            model, tokenizer, [r["problem"] for r in labelled], [r["steps"] for r in labelled],
            batch_tokens=batch_tokens, max_length=cfg.max_length, device=device, stats=stats,
            system_prompt=cfg.system_prompt) if labelled else []
        for row, res in zip(labelled, results):
            n_steps = len(row["steps"])
            if res.error is not None:
                subset.unscorable += 1
                mean = std = np.zeros(0, dtype=np.float32)
            else:
                mean, std = res.mean.astype(np.float32), res.std.astype(np.float32)
                subset.truncated += res.n_scored_steps < n_steps
            rows.append({"id": row["id"], "subset": subset.name, "label": row["first_error_step"],
                         "prediction": -1, "step_mean": mean.tolist(), "step_std": std.tolist(),
                         "n_scored_steps": 0 if res.error is not None else int(res.n_scored_steps),
                         "n_steps": n_steps})
        bar.update(batch.n_read)
    return rows


def run_evaluate(cfg: EvaluateConfig, progress: bool = True) -> EvaluateResult:
    from actprm.score import load_for_scoring

    start = time.perf_counter()
    subsets = resolve_subsets(cfg)
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
        threshold, sweep = cfg.threshold, None
        if cfg.sweep_subset is not None:
            part = [r for r in rows if r["subset"] == cfg.sweep_subset]
            try:
                threshold, best = best_threshold([r["step_mean"] for r in part], [r["label"] for r in part])
            except ValueError:
                raise UserError(f"--sweep-subset {cfg.sweep_subset}: F1 is undefined there (it needs labelled "
                                f"items with an error and items without)") from None
            sweep = {"subset": cfg.sweep_subset, "grid": [0.01, 0.99, 0.01], "f1": round(best, 6),
                     "ties": "closest to 0.5, then lower"}
        for r in rows:
            r["prediction"] = predict_first_error(r["step_mean"], threshold)
        write_parquet_atomic(table_from_rows(rows, "predictions"), out.path("predictions.parquet"))
        metrics = compute_metrics(rows, names)
        for s in subsets:
            metrics["subsets"][s.name] |= {
                "path": s.path, "rows_read": s.counts.read, "rows_invalid": s.counts.n_errors,
                "rows_unlabelled": s.unlabelled, "rows_truncated": s.truncated, "rows_unscorable": s.unscorable}
        errors = RowCounts()
        for s in subsets:
            errors.merge(s.counts)
        seconds = time.perf_counter() - start
        metrics = {
            "mean_f1": metrics.pop("mean_f1"), "threshold": threshold, "threshold_from": cfg.sweep_subset,
            "model": model_name, **metrics,
            "counts": {"rows_read": errors.read, "rows_invalid": errors.n_errors,
                       "invalid_by_kind": dict(errors.errors.most_common()),
                       "rows_unlabelled": sum(s.unlabelled for s in subsets), "rows_evaluated": len(rows),
                       "rows_truncated": sum(s.truncated for s in subsets),
                       "rows_unscorable": sum(s.unscorable for s in subsets)},
            "sweep": sweep, "device": device, "seconds": round(seconds, 3), "scoring": stats.as_dict(),
        }
        out.path("metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return EvaluateResult(metrics, Path(cfg.output))
