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
``calibration``. README, "The rule and its calibration".
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
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def fit_platt(mean_logit, targets, *, ridge: float = 1.0, iters: int = 50) -> tuple[float, float]:
    """(scale, shift) minimising the BCE of ``sigmoid(scale * z + shift)`` against `targets` (in [0, 1]),
    plus ``ridge * ((scale - 1)^2 + shift^2)`` so a handful of held-out steps stays near the identity.
    Newton's method on the two parameters; scale is kept >= 0.05 (a calibration never flips the order)."""
    z = np.asarray(mean_logit, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if z.size == 0:
        return 1.0, 0.0
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = sigmoid(a * z + b)
        r = p - y
        g = np.array([np.dot(r, z) + 2 * ridge * (a - 1), r.sum() + 2 * ridge * b])
        w = p * (1 - p)
        h = np.array([[np.dot(w, z * z) + 2 * ridge, np.dot(w, z)], [np.dot(w, z), w.sum() + 2 * ridge]])
        try:
            delta = np.linalg.solve(h, g)
        except np.linalg.LinAlgError:
            break
        a, b = max(0.05, a - delta[0]), b - delta[1]
        if np.abs(delta).max() < 1e-8:
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


def choose_threshold(means: Sequence[np.ndarray], truth: Sequence[int], grid=THRESHOLD_GRID) -> float:
    """The threshold of the grid whose predicted first errors (first step with mean below it) give the best
    ProcessBench F1 on these rows; ties go to the one nearest 0.5. 0.5 when no row is given."""
    if not len(means):
        return 0.5
    best, best_t = -1.0, 0.5
    for t in sorted(grid, key=lambda v: (abs(v - 0.5), v)):
        f1 = processbench_f1(truth, [uncertainty.predicted_first_error(m, t) for m in means])
        if f1 > best + 1e-12:
            best, best_t = f1, float(t)
    return best_t


def calibration_record(probs: Sequence[np.ndarray], targets: Sequence[Sequence[float | None]],
                       truth: Sequence[int]) -> dict | None:
    """The checkpoint's calibration from held-out rows: per row its heads' probabilities (n_scored, K), its
    step targets (None: not trained, e.g. after the first error) and its labelled first error (-1: none).
    None when no held-out step has a target."""
    z, y = [], []
    for p, t in zip(probs, targets):
        m = logit(np.asarray(p, dtype=np.float64)).mean(axis=1)
        for i, v in enumerate(t[: len(m)]):
            if v is not None:
                z.append(m[i])
                y.append(v)
    if not y:
        return None
    scale, shift = fit_platt(z, y)
    cal = [apply_platt(p, scale, shift) for p in probs]
    stds = np.concatenate([uncertainty.step_stats(c)[1] for c in cal if len(c)]) if cal else np.zeros(0)
    spread = float(np.median(stds)) if stds.size else NOMINAL_SPREAD
    threshold = choose_threshold([uncertainty.step_stats(c)[0] for c in cal], truth)
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
