"""What a checkpoint learns about its own outputs on held-out labels (NumPy only).

A training round holds out a slice of its labelled rows (`holdout`, by id hash). After the round,
on those rows' scored steps:

* **Platt scaling** of the heads: one (scale, shift) with ``p' = sigmoid(scale * logit(p) + shift)``
  for every head, fitted to the held-out step labels (:func:`fit_platt`). The rule's δ_pred then reads
  a calibrated chance that the step is right, whatever the recipe, the label noise or K;
* the **spread scale**: the median spread (std over heads) of the calibrated probabilities on the held-out
  steps. The rule's δ_std is in these units (:func:`relative_spread`): 2 means "twice the disagreement
  the heads show, at the median, on labelled steps";
* the **decision threshold**: the step-probability threshold that maximises ProcessBench F1 on the held-out
  rows (:func:`choose_threshold`); `score` and `filter` use it for the predicted first error.

The record (:func:`calibration_record`) lives in the checkpoint's ``prm_config.json`` under
``calibration``. docs/ensemble-and-rule.md, "The rule and its calibration".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from actprm import uncertainty
from actprm.metrics import processbench_scores

#: δ_std's unit for a model no actprm round calibrated (the shipped PRM, an imported one): chosen so that the
#: default δ_std keeps its earlier absolute meaning there (4 x 0.0125 = 0.05).
NOMINAL_SPREAD = 0.0125
#: thresholds tried by :func:`choose_threshold`
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)
_EPS = 1e-6


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))  # no overflow for large |z|


def fit_platt(mean_logit, targets, *, ridge: float = 1.0, iters: int = 50, weights=None) -> tuple[float, float]:
    """(scale, shift) minimising the BCE of ``sigmoid(scale * z + shift)`` against `targets` (in [0, 1]),
    plus ``ridge * ((scale - 1)^2 + shift^2)`` so a handful of held-out steps stays near the identity.
    Newton's method on the two parameters; scale is kept >= 0.05 (a calibration never flips the order).
    `weights`: one per step (None: 1 each)."""
    z = np.asarray(mean_logit, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    v = np.ones_like(z) if weights is None else np.asarray(weights, dtype=np.float64)
    if z.size == 0:
        return 1.0, 0.0
    a, b = 1.0, 0.0

    def objective(a: float, b: float) -> float:
        u = a * z + b  # BCE with logits, stably: softplus(u) - y * u
        return float(np.dot(v, np.logaddexp(0.0, u) - y * u) + ridge * ((a - 1) ** 2 + b * b))

    current = objective(a, b)
    for _ in range(iters):
        p = sigmoid(a * z + b)
        r = (p - y) * v
        g = np.array([np.dot(r, z) + 2 * ridge * (a - 1), r.sum() + 2 * ridge * b])
        w = p * (1 - p) * v
        h = np.array([[np.dot(w, z * z) + 2 * ridge, np.dot(w, z)], [np.dot(w, z), w.sum() + 2 * ridge]])
        try:
            delta = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        step = 1.0  # damped: halve the Newton step until the objective falls (a far start cannot overshoot)
        while step > 1e-6:
            na, nb = max(0.05, a - step * delta[0]), b - step * delta[1]
            value = objective(na, nb)
            if value <= current:
                break
            step /= 2
        else:
            break
        moved = max(abs(na - a), abs(nb - b))
        a, b, current = na, nb, value
        if moved < 1e-8:
            break
    return float(a), float(b)


def apply_platt(probs, scale: float, shift: float) -> np.ndarray:
    """Each head's probability through ``sigmoid(scale * logit(p) + shift)``."""
    return sigmoid(scale * logit(probs) + shift)


def relative_spread(std, spread_scale: float | None) -> np.ndarray:
    """The heads' spread in units of `spread_scale` (None: :data:`NOMINAL_SPREAD`)."""
    return np.asarray(std, dtype=np.float64) / float(spread_scale or NOMINAL_SPREAD)


def processbench_f1(truth: Sequence[int], pred: Sequence[int]) -> float:
    """ProcessBench's F1 (actprm.metrics.processbench_scores); where the rows hold only one kind (all with an
    error, or none), that kind's accuracy; nan for no rows."""
    s = processbench_scores(truth, pred)
    for value in (s["f1"], s["error_acc"], s["correct_acc"]):
        if value is not None:
            return value
    return float("nan")


def weighted_f1(truth, pred, weights) -> float:
    """ProcessBench's F1 with a weight per row (each row counts `weight` times in both accuracies); where the
    rows hold only one kind, that kind's accuracy; nan for no rows."""
    truth, pred, w = np.asarray(truth), np.asarray(pred), np.asarray(weights, dtype=np.float64)
    hit = (truth == pred).astype(np.float64)
    accs = []
    for kind in (truth >= 0, truth < 0):
        accs.append(float((w * hit)[kind].sum() / w[kind].sum()) if w[kind].sum() > 0 else None)
    err, cor = accs
    if err is not None and cor is not None:
        return 2 * err * cor / (err + cor) if err + cor > 0 else 0.0
    return err if err is not None else (cor if cor is not None else float("nan"))


def choose_threshold(means: Sequence[np.ndarray], truth: Sequence[int], grid=THRESHOLD_GRID,
                     weights: Sequence[float] | None = None, tolerance: float = 0.0,
                     one_se: bool = False) -> float:
    """The threshold of the grid whose predicted first errors (first step with mean below it) give the best
    ProcessBench F1 on these rows (`weights`: one per row, weighted_f1); ties, and with `tolerance` every F1
    within it of the best, go to the one nearest 0.5; `one_se`: the tolerance is at least the best F1's
    standard error on these rows (weighted rows count as Kish's effective sample size). 0.5 when no row is
    given."""
    if not len(means):
        return 0.5
    # the first step below t is the number of leading steps whose running minimum is >= t (-1: all of them)
    mins = [np.minimum.accumulate(np.asarray(m, dtype=np.float64)) for m in means]
    sizes = np.array([len(m) for m in mins])
    flat = np.concatenate(mins) if len(mins) else np.zeros(0)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    scores = []
    for t in sorted(grid, key=lambda v: (abs(v - 0.5), v)):
        above = np.add.reduceat((flat >= t).astype(np.int64), starts) if flat.size else np.zeros(len(mins), int)
        above = np.where(sizes > 0, above, 0)
        pred = np.where(above == sizes, -1, above)
        scores.append((processbench_f1(truth, pred) if weights is None else weighted_f1(truth, pred, weights),
                       float(t)))
    best = max(f for f, _ in scores)
    if one_se and 0 < best < 1:  # the one-standard-error rule: any F1 within the best's sampling error will do
        w = np.ones(len(means)) if weights is None else np.asarray(weights, dtype=np.float64)
        n_eff = w.sum() ** 2 / max(float((w * w).sum()), 1e-12)  # Kish's effective sample size
        tolerance = max(tolerance, math.sqrt(best * (1 - best) / n_eff))
    return next(t for f, t in scores if f >= best - tolerance - 1e-12)


def weighted_median(values, weights) -> float:
    order = np.argsort(values, kind="stable")
    v, w = np.asarray(values, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    c = np.cumsum(w)
    return float(v[np.searchsorted(c, 0.5 * c[-1])])


def calibration_record(probs: Sequence[np.ndarray], targets: Sequence[Sequence[float | None]],
                       truth: Sequence[int], weights: Sequence[float] | None = None,
                       tolerance: float = 0.0, one_se: bool = False) -> dict | None:
    """The checkpoint's calibration from held-out rows: per row its heads' probabilities (n_scored, K), its
    step targets (None: not trained, e.g. after the first error) and its labelled first error (-1: none).
    `weights`: one per row, for rows drawn unevenly (the one-pass window: a rule-selected row 1, a row
    explored among the certain ones the inverse of its chance); None: 1 each. `tolerance`, `one_se`: of the
    threshold's F1 (choose_threshold). None when no held-out step has a target."""
    rw = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    z, y, zw = [], [], []
    for p, t, w in zip(probs, targets, rw):
        m = logit(np.asarray(p, dtype=np.float64)).mean(axis=1)
        for i, v in enumerate(t[: len(m)]):
            if v is not None:
                z.append(m[i])
                y.append(v)
                zw.append(w)
    if not y:
        return None
    scale, shift = fit_platt(z, y, weights=None if weights is None else zw)
    cal = [apply_platt(p, scale, shift) for p in probs]
    per_row = [uncertainty.step_stats(c)[1] for c in cal if len(c)]
    stds = np.concatenate(per_row) if per_row else np.zeros(0)
    if not stds.size:
        spread = NOMINAL_SPREAD
    elif weights is None:
        spread = float(np.median(stds))
    else:
        spread = weighted_median(stds, np.concatenate([np.full(len(c), w) for c, w in zip(cal, rw) if len(c)]))
    threshold = choose_threshold([uncertainty.step_stats(c)[0] for c in cal], truth,
                                 weights=None if weights is None else rw, tolerance=tolerance, one_se=one_se)
    record = {"scale": scale, "shift": shift, "spread_scale": max(spread, 1e-6), "threshold": threshold,
              "held_out_rows": len(probs), "held_out_steps": len(y)}
    try:
        return check_record(record)
    except ValueError:  # a fit that did not converge to finite numbers: the heads stay uncalibrated
        return None


def check_record(record) -> dict | None:
    """A calibration record read from a checkpoint, validated (ValueError: malformed)."""
    if record is None:
        return None
    if not isinstance(record, dict):
        raise ValueError("calibration: expected a JSON object")
    out = dict(record)
    for key in ("scale", "shift", "spread_scale", "threshold"):
        v = out.get(key)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ValueError(f"calibration.{key}: expected a finite number, got {v!r}")
    if out["scale"] <= 0 or out["spread_scale"] <= 0 or not 0 < out["threshold"] < 1:
        raise ValueError("calibration: scale and spread_scale must be > 0 and threshold in (0, 1)")
    return out


#: the rule's default δ_std, in units of the model's spread scale
DEFAULT_DELTA_STD_UNITS = 4.0


def rule_constants(calibration: dict | None, threshold: float | None = None,
                   spread_scale: float | None = None) -> tuple[float, float]:
    """(decision threshold, spread scale) the rule and the predicted first error use: the settings' own when
    given, else the model's calibration record's, else 0.5 and :data:`NOMINAL_SPREAD`."""
    record = calibration or {}
    return (float(threshold if threshold is not None else record.get("threshold", 0.5)),
            float(spread_scale if spread_scale is not None else record.get("spread_scale", NOMINAL_SPREAD)))
