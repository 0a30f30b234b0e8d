"""Ensemble uncertainty, acquisition scores and selection for ActPRM.

ActPRM (Duan et al., 2025, "Efficient Process Reward Model Training via Active
Learning") puts K heads on a PRM.  For step i of a trajectory each head k gives
a probability ``p[i, k]`` (sigmoid of its logit) that the step is correct.
Per step we use the ensemble mean ``mu_i`` and the unbiased std ``sigma_i``.

The ActPRM selection rule:

* step i is *certain* iff ``sigma_i <= delta_std`` and
  (``mu_i >= delta_pred`` or ``mu_i <= 1 - delta_pred``);
* E is the predicted first error (first step with ``mu_i < 0.5``), or the last
  step when there is none.  Steps after E do not affect the label;
* a trajectory is *uncertain* (sent for labelling) iff some step in 0..E is
  not certain.

Acquisition scores (entropy, BALD, variance, margin, random) are per-step
scores reduced ("max" or "mean") over the same steps 0..E; they drive the
alternative fixed-budget selection (top-k).  A trajectory with no steps is
certain and scores 0.0 (except "random", which ignores the steps).

Pure NumPy: computations are float64; :func:`summarize` casts to float32.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np

#: The rule's defaults on a model without a calibration record (absolute units). A calibrated checkpoint reads
#: δ_pred as a calibrated chance and δ_std in units of its spread scale (actprm.calibration; docs/ensemble-and-rule.md, "The rule
#: and its calibration"). Heads trained on labels wrong on a share ε of steps settle near 1 − ε on a correct
#: step, so read raw, a δ_pred of 0.95 marks every step of an 18%-wrong judge's corpus uncertain.
DEFAULT_DELTA_PRED = 0.8
DEFAULT_DELTA_STD = 0.05
#: The ActivePRM paper's highlighted setting (its code's defaults were 0.9 / 0.01), for labels near-clean.
PAPER_DELTA_PRED = 0.95
PAPER_DELTA_STD = 0.005
_EPS = 1e-12
REDUCTIONS = ("max", "mean")


def _as_probs(probs) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"probs must have shape (n_steps, K) with K >= 1, got {arr.shape}")
    return arr


def _check_deltas(delta_pred: float, delta_std: float) -> None:
    if not 0.5 < delta_pred <= 1.0:
        raise ValueError(f"delta_pred must be in (0.5, 1], got {delta_pred}")
    if not delta_std >= 0.0:
        raise ValueError(f"delta_std must be >= 0, got {delta_std}")


# --------------------------------------------------------------------------- stats
def step_stats(probs) -> tuple[np.ndarray, np.ndarray]:
    """Per-step ensemble mean and unbiased (ddof=1) std over the K heads.

    ``probs`` has shape (n_steps, K).  With a single head (K == 1) the std is
    undefined; we define it as 0.0.  Returns two float64 arrays of shape (n_steps,).
    """
    p = _as_probs(probs)
    mean = p.mean(axis=1)
    std = p.std(axis=1, ddof=1) if p.shape[1] > 1 else np.zeros(p.shape[0])
    return mean, std


def predicted_first_error(mean, threshold: float = 0.5) -> int:
    """Index of the first step with ``mean < threshold``; -1 if there is none."""
    below = np.flatnonzero(np.asarray(mean) < threshold)
    return int(below[0]) if below.size else -1


def last_relevant_step(mean, threshold: float = 0.5) -> int:
    """E: the predicted first error (at `threshold`), or the last step if none (-1 for no steps)."""
    first = predicted_first_error(mean, threshold)
    return first if first >= 0 else len(mean) - 1


# --------------------------------------------------------------------------- ActPRM rule
def certain_steps(mean, std, delta_pred: float = DEFAULT_DELTA_PRED,
                  delta_std: float = DEFAULT_DELTA_STD, threshold: float = 0.5) -> np.ndarray:
    """Boolean mask: ``std <= delta_std`` and the step's prediction at `threshold` is right with chance at
    least `delta_pred` when `mean` is a calibrated chance of being right: ``mean >= max(delta_pred,
    threshold)`` (predicted right) or ``mean < threshold`` and ``mean <= 1 - delta_pred`` (predicted wrong).
    At threshold 0.5 this is the paper's ``mean >= delta_pred or mean <= 1 - delta_pred``."""
    _check_deltas(delta_pred, delta_std)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    confident = (mean >= max(delta_pred, threshold)) | ((mean < threshold) & (mean <= 1.0 - delta_pred))
    return (std <= delta_std) & confident


def is_uncertain(mean, std, delta_pred: float = DEFAULT_DELTA_PRED,
                 delta_std: float = DEFAULT_DELTA_STD, threshold: float = 0.5) -> bool:
    """ActPRM rule: True iff some step in 0..E is not certain (see module docstring).

    Defaults: DEFAULT_DELTA_PRED / DEFAULT_DELTA_STD (0.8 / 0.05, noise-aware); the paper's
    highlighted setting is PAPER_DELTA_PRED / PAPER_DELTA_STD (0.95 / 0.005).
    """
    certain = certain_steps(mean, std, delta_pred, delta_std, threshold)
    end = last_relevant_step(mean, threshold)
    return bool(not certain[: end + 1].all())


# --------------------------------------------------------------------------- acquisition
def binary_entropy(p) -> np.ndarray:
    """H(p) = -p ln p - (1-p) ln(1-p) in nats, with p clipped to [1e-12, 1-1e-12]."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return -p * np.log(p) - (1.0 - p) * np.log1p(-p)


def entropy_per_step(probs) -> np.ndarray:
    """Binary entropy of the ensemble mean (total predictive uncertainty)."""
    return binary_entropy(_as_probs(probs).mean(axis=1))


def bald_per_step(probs) -> np.ndarray:
    """BALD mutual information H(mean_k p_k) - mean_k H(p_k), clipped at 0."""
    p = _as_probs(probs)
    mi = binary_entropy(p.mean(axis=1)) - binary_entropy(p).mean(axis=1)
    return np.maximum(mi, 0.0)


def variance_per_step(probs) -> np.ndarray:
    """Unbiased variance over heads (0 for K == 1)."""
    return step_stats(probs)[1] ** 2


def margin_per_step(probs) -> np.ndarray:
    """1 - |2 mean - 1|: 1 at mean 0.5, 0 at mean 0 or 1."""
    return 1.0 - np.abs(2.0 * _as_probs(probs).mean(axis=1) - 1.0)


def random_score(traj_id: str, seed: int = 0) -> float:
    """Deterministic pseudo-random score in [0, 1) from sha256(f"{seed}:{traj_id}")."""
    digest = hashlib.sha256(f"{seed}:{traj_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _random_per_step(probs, traj_id, seed):
    if traj_id is None:
        raise ValueError("acquisition 'random' needs traj_id")
    return np.full(_as_probs(probs).shape[0], random_score(traj_id, seed))


# name -> fn(probs, traj_id, seed) -> per-step scores of shape (n_steps,)
ACQUISITIONS: dict[str, Callable[[np.ndarray, str | None, int], np.ndarray]] = {
    "entropy": lambda probs, traj_id, seed: entropy_per_step(probs),
    "bald": lambda probs, traj_id, seed: bald_per_step(probs),
    "variance": lambda probs, traj_id, seed: variance_per_step(probs),
    "margin": lambda probs, traj_id, seed: margin_per_step(probs),
    "random": _random_per_step,
}
#: The active loop's strategies: the ActPRM rule, the top-k of an acquisition (random: a seeded order of the
#: ids, nothing scored), or everything.
LOOP_STRATEGIES = ("actprm", *ACQUISITIONS, "full")


def _check_acquisition(name: str, reduction: str = "max") -> None:
    if name not in ACQUISITIONS:
        raise ValueError(f"unknown acquisition {name!r}; valid: {sorted(ACQUISITIONS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; valid: {list(REDUCTIONS)}")


def _reduce(per_step: np.ndarray, end: int, reduction: str) -> float:
    scope = per_step[: end + 1]
    if scope.size == 0:
        return 0.0
    return float(scope.max() if reduction == "max" else scope.mean())


def acquisition(name: str, probs, *, reduction: str = "max", traj_id: str | None = None,
                seed: int = 0) -> float:
    """Trajectory score: per-step acquisition reduced over steps 0..E."""
    _check_acquisition(name, reduction)
    per_step = ACQUISITIONS[name](probs, traj_id, seed)
    return _reduce(per_step, last_relevant_step(step_stats(probs)[0]), reduction)


# --------------------------------------------------------------------------- batch
def summarize(probs_list: Sequence, ids: Sequence[str], *,
              delta_pred: float = DEFAULT_DELTA_PRED, delta_std: float = DEFAULT_DELTA_STD,
              acquisition: str = "entropy", reduction: str = "max", seed: int = 0,
              threshold: float = 0.5, spread_scale: float = 1.0) -> dict:
    """Stats, ActPRM decision and acquisition score for a ragged batch of trajectories.

    `threshold`: a step is predicted wrong iff its mean is below it (the first error and E);
    `spread_scale`: the rule compares ``std / spread_scale`` with `delta_std` (actprm.calibration).

    Returns ``step_mean`` / ``step_std`` (lists of float32 arrays), ``pred_first_error``
    (int32), ``uncertain`` (bool) and ``acquisition`` (float32) arrays, one entry per id.
    """
    if len(probs_list) != len(ids):
        raise ValueError(f"got {len(probs_list)} prob arrays but {len(ids)} ids")
    _check_deltas(delta_pred, delta_std)
    _check_acquisition(acquisition, reduction)
    means, stds, first, uncertain, scores = [], [], [], [], []
    for probs, traj_id in zip(probs_list, ids):
        p = _as_probs(probs)
        mean, std = step_stats(p)
        means.append(mean.astype(np.float32))
        stds.append(std.astype(np.float32))
        first.append(predicted_first_error(mean, threshold))
        uncertain.append(is_uncertain(mean, std / spread_scale, delta_pred, delta_std, threshold))
        per_step = ACQUISITIONS[acquisition](p, traj_id, seed)
        scores.append(_reduce(per_step, last_relevant_step(mean, threshold), reduction))
    return {
        "step_mean": means,
        "step_std": stds,
        "pred_first_error": np.asarray(first, dtype=np.int32),
        "uncertain": np.asarray(uncertain, dtype=bool),
        "acquisition": np.asarray(scores, dtype=np.float32),
    }


# --------------------------------------------------------------------------- selection
def select_budget(ids: Sequence[str], scores, k: int) -> np.ndarray:
    """Mask of the top-k by score (descending), ties by id ascending; NaN scores rank last.

    Independent of input order; k >= len selects all, k <= 0 none.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(ids) != scores.shape[0]:
        raise ValueError(f"got {len(ids)} ids but {scores.shape[0]} scores")
    mask = np.zeros(len(ids), dtype=bool)
    if k <= 0:
        return mask
    nan = np.isnan(scores)
    key = np.where(nan, 0.0, -scores)  # NaN ranks last; 0.0 keeps keys comparable
    order = sorted(range(len(ids)), key=lambda i: (bool(nan[i]), float(key[i]), ids[i]))
    mask[order[:k]] = True
    return mask


# --------------------------------------------------------------------------- calibration
def trajectory_extremes(probs) -> tuple[float, float]:
    """(largest σ, smallest confidence max(μ, 1−μ)) over steps 0..E of a (n_steps, K) array."""
    return stats_extremes(*step_stats(probs))


def stats_extremes(mean, std, threshold: float = 0.5) -> tuple[float, float]:
    """(largest σ, smallest confidence) over steps 0..E of per-step means and stds (confidence: μ for a step
    predicted right at `threshold`, 1−μ for one predicted wrong; max(μ, 1−μ) at 0.5): the
    trajectory is certain iff largest σ ≤ δ_std and smallest confidence ≥ δ_pred. No steps: (0.0, 1.0),
    always certain."""
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    end = last_relevant_step(mean, threshold)
    if end < 0:
        return 0.0, 1.0
    conf = np.where(mean >= threshold, mean, 1.0 - mean)[: end + 1]  # the chance its prediction is right
    return float(std[: end + 1].max()), float(conf.min())


def calibrate_deltas(probs_list: Sequence, target_rate: float, grid: int = 1001) -> dict:
    """δ_pred and δ_std under which about ``target_rate`` of these trajectories ((n_steps, K) arrays)
    are uncertain: :func:`choose_deltas` of their extremes."""
    if not len(probs_list):
        raise ValueError("calibration needs at least one trajectory")
    return choose_deltas([trajectory_extremes(p) for p in probs_list], target_rate, grid)


def choose_deltas(extremes: Sequence[tuple[float, float]], target_rate: float, grid: int = 1001) -> dict:
    """δ_pred and δ_std under which about ``target_rate`` of the trajectories with these
    (largest σ, smallest confidence) pairs (:func:`stats_extremes`) are uncertain.

    One knob moves both thresholds together along matching quantiles of the sample: at level
    q, δ_std is the q-quantile of the trajectories' largest σ and δ_pred the (1−q)-quantile of
    their smallest confidence (kept above 0.5), so q = 0 is the strictest rule (almost every
    trajectory uncertain) and q = 1 the loosest; the rate falls as q rises. The level whose
    rate on the sample is closest to the target is chosen (the strictest of equals). Returns
    ``delta_pred``, ``delta_std``, ``rate`` (on the sample), ``level`` and ``n``.
    """
    if not 0.0 <= target_rate <= 1.0:
        raise ValueError(f"target_rate must be in [0, 1], got {target_rate}")
    if not len(extremes):
        raise ValueError("calibration needs at least one trajectory")
    ext = np.asarray(extremes, dtype=np.float64).reshape(-1, 2)
    s, c = ext[:, 0], ext[:, 1]
    levels = np.linspace(0.0, 1.0, grid)
    d_std = np.quantile(s, levels)
    d_pred = np.clip(np.quantile(c, 1.0 - levels), np.nextafter(0.5, 1.0), 1.0)
    certain = (s[None, :] <= d_std[:, None]) & (c[None, :] >= d_pred[:, None])
    rates = 1.0 - certain.mean(axis=1)
    best = int(np.argmin(np.abs(rates - target_rate)))
    return {"delta_pred": float(d_pred[best]), "delta_std": float(d_std[best]), "rate": float(rates[best]),
            "level": float(levels[best]), "n": len(ext)}
