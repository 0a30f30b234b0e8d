"""Learning curves: labels needed to reach an F1, the savings ratio of a selection strategy over random,
and the per-row selection statistics of a flat ``(n_steps_total, K)`` probability matrix (vectorised
forms of actprm.uncertainty's, for pools scored from cached head inputs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from actprm import uncertainty

_EPS = 1e-12


def labels_to_reach(labels: Sequence[float], f1: Sequence[float], target: float, *, log: bool = False
                    ) -> float | None:
    """Labels at which the curve first reaches `target`: interpolated between the two measured budgets around
    the first crossing, linearly in the labels or (`log`) in their logarithm, which does not favour the larger
    budget across a wide gap (the first budget itself when it already reaches it); None when no budget does."""
    x = np.asarray(labels, dtype=np.float64)
    y = np.asarray(f1, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError("labels and f1 must be 1-D and of the same length")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    hit = np.flatnonzero(y >= target)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    if log and x0 > 0:
        return float(np.exp(np.log(x0) + (target - y0) * (np.log(x1) - np.log(x0)) / (y1 - y0)))
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def savings_ratio(random_curve: tuple[Sequence[float], Sequence[float]],
                  strategy_curve: tuple[Sequence[float], Sequence[float]], target: float, *, log: bool = False
                  ) -> float | None:
    """Labels random needs to reach `target` over labels the strategy needs (> 1: the strategy saves labels).

    Each curve is ``(labels, f1)``. None when either curve never reaches the target (report which)."""
    a = labels_to_reach(*random_curve, target, log=log)
    b = labels_to_reach(*strategy_curve, target, log=log)
    if a is None or b is None or b <= 0:
        return None
    return a / b


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t-interval of the mean); half-width nan with one value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else float("nan"), float("nan")

    half = stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean()), float(half)


# --------------------------------------------------------------------------- flat statistics


def row_stats(probs: np.ndarray, offsets: np.ndarray, *, delta_pred: float = uncertainty.DEFAULT_DELTA_PRED,
              delta_std: float = uncertainty.DEFAULT_DELTA_STD, threshold: float = 0.5, spread_scale: float = 1.0
              ) -> dict[str, np.ndarray]:
    """Per row of a flat ``(S, K)`` matrix with row ``i`` at ``offsets[i]:offsets[i+1]`` (every row has
    >= 1 step): ActPRM's ``uncertain`` under the deltas, ``entropy`` and ``bald`` reduced by max over steps
    0..E (E the predicted first error, else the last step), ``pred_first_error``, and the extremes
    (largest std / `spread_scale`, smallest confidence) over 0..E, a step predicted wrong iff its mean is
    below `threshold`. As actprm.uncertainty.summarize, row by row."""
    p = np.asarray(probs, dtype=np.float64)
    n = len(offsets) - 1
    mean = p.mean(axis=1)
    std = p.std(axis=1, ddof=1) if p.shape[1] > 1 else np.zeros(len(p))
    row = np.repeat(np.arange(n), np.diff(offsets))
    pos = np.arange(len(p)) - offsets[row]
    wrong = mean < threshold
    first = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(wrong)
    # first wrong step per row: the first occurrence of each row among wrong steps
    rows_w, first_at = np.unique(row[idx], return_index=True)
    first[rows_w] = pos[idx[first_at]]
    end = np.where(first >= 0, first, np.diff(offsets) - 1)
    scope = pos <= end[row]

    def ent(q):
        q = np.clip(q, _EPS, 1 - _EPS)
        return -q * np.log(q) - (1 - q) * np.log1p(-q)

    entropy = ent(mean)
    bald = np.maximum(entropy - ent(p).mean(axis=1), 0.0)
    conf = np.where(wrong, 1 - mean, mean)

    def reduce_max(v, fill):
        out = np.full(n, fill, dtype=np.float64)
        np.maximum.at(out, row[scope], v[scope])
        return out

    def reduce_min(v, fill):
        out = np.full(n, fill, dtype=np.float64)
        np.minimum.at(out, row[scope], v[scope])
        return out

    max_std = reduce_max(std / spread_scale, 0.0)
    min_conf = reduce_min(conf, 1.0)
    uncertain = ~((max_std <= delta_std) & (min_conf >= delta_pred))
    return {"uncertain": uncertain, "entropy": reduce_max(entropy, 0.0), "bald": reduce_max(bald, 0.0),
            "pred_first_error": first, "max_std": max_std, "min_conf": min_conf, "mean": mean, "std": std}
