"""From scores to a selection: the ActPRM rule on a scorer's outputs, budgets, loop strategies, calibration.

The maths (the rule, acquisition functions, top-k) is `actprm.uncertainty`, plain NumPy; this module
joins it with rows and models. A loop strategy is either the ActPRM rule (`actprm`), a top-k by one of
`uncertainty.ACQUISITIONS` (`entropy`, `bald`, ...: adding an acquisition there adds the strategy),
`random` (top-k of a seeded hash of the id, nothing scored) or `full` (everything; nothing scored).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from actprm import uncertainty
from actprm.calibration import check_record, rule_constants
from actprm.checkpoint import load_for_scoring
from actprm.config import RuleSettings
from actprm.errors import UserError
from actprm.io.writers import write_parquet_atomic
from actprm.model import PRM_CONFIG_NAME
from actprm.sample import sample_corpus
from actprm.scoring import score_trajectories
from actprm.shipped import default_prm_path

#: Loop strategies that need the current model's scores.
SCORING_STRATEGIES = tuple(s for s in uncertainty.LOOP_STRATEGIES if s not in ("random", "full"))


def model_calibration(model) -> dict | None:
    """The calibration record of a loaded scorer's heads (None: uncalibrated, or no heads)."""
    return getattr(getattr(model, "heads", None), "calibration", None)


def join_scores(rows: list[dict], results: list, cfg: RuleSettings, model_name: str, *, by_rule: bool = True,
                calibration: dict | None = None) -> tuple[list[dict], list[tuple[int, str]]]:
    """Rows joined with their scores and the selection rule: (scored rows, [(position, reason)] of
    the rows that could not be scored, i.e. whose first step alone does not fit the model). `calibration`:
    the model's record (its decision threshold and spread scale, unless `cfg` sets them)."""
    ok = [(row, res) for row, res in zip(rows, results) if res.error is None]
    too_long = [(i, f"too long: {res.error}") for i, res in enumerate(results) if res.error is not None]
    if not ok:
        return [], too_long
    threshold, spread = rule_constants(calibration, cfg.decision_threshold, cfg.spread_scale)
    summary = uncertainty.summarize(
        [res.probs for _, res in ok], [row["id"] for row, _ in ok],
        delta_pred=cfg.delta_pred, delta_std=cfg.delta_std,
        acquisition=cfg.acquisition, reduction=cfg.reduction, seed=cfg.seed,
        threshold=threshold, spread_scale=spread)
    out = []
    for i, (row, res) in enumerate(ok):
        out.append(row | {
            "step_mean": summary["step_mean"][i].tolist(),
            # the implicit scorer: no spread (one model), and its values and rewards (actprm.implicit)
            "step_std": summary["step_std"][i].tolist() if res.step_value is None else None,
            "step_value": None if res.step_value is None else res.step_value.tolist(),
            "step_reward": None if res.step_reward is None else res.step_reward.tolist(),
            "pred_first_error": int(summary["pred_first_error"][i]),
            "uncertain": bool(summary["uncertain"][i]),
            "acquisition": float(summary["acquisition"][i]),
            "selected": bool(summary["uncertain"][i]) and by_rule,
            "n_scored_steps": int(res.n_scored_steps),
            "prm_model": model_name,
        })
    return out, too_long


def apply_budget(directory: Path, budget: int) -> int:
    """Set `selected` on the top-`budget` rows by acquisition (ties by id) across every shard."""
    files = sorted(directory.glob("*.parquet"))
    keys = [pq.read_table(f, columns=["id", "acquisition"]) for f in files]
    ids = [i for t in keys for i in t.column("id").to_pylist()]
    scores = np.concatenate([t.column("acquisition").to_numpy() for t in keys]) if keys else np.zeros(0)
    chosen = {rid for rid, keep in zip(ids, uncertainty.select_budget(ids, scores, budget)) if keep}
    for f in files:
        table = pq.read_table(f)
        mask = pa.array([rid in chosen for rid in table.column("id").to_pylist()], type=pa.bool_())
        table = table.set_column(table.schema.get_field_index("selected"), table.schema.field("selected"), mask)
        write_parquet_atomic(table, f)
    return len(chosen)


def score_rows(cfg: Any, rows: list[dict[str, Any]], loaded: tuple | None = None) -> tuple[list, list[str]]:
    """Per-step head probabilities of `rows` with the config's PRM: (probs of the scorable rows, their ids).

    Rows whose first step does not fit the model are left out (the score job sends them to errors).
    `loaded`: load_for_scoring(cfg), when the caller has it already.
    """
    device, model, tokenizer, _, batch_tokens = loaded or load_for_scoring(cfg)
    results = score_trajectories(model, tokenizer, [r["problem"] for r in rows], [r["steps"] for r in rows],
                                 batch_tokens=batch_tokens, max_length=cfg.max_length, device=device,
                                 system_prompt=cfg.system_prompt)
    ok = [(r, res) for r, res in zip(rows, results) if res.error is None]
    return [res.probs for _, res in ok], [r["id"] for r, _ in ok]


def calibrate(cfg, sources: list, loaded: tuple | None = None, rows: list | None = None):
    """`cfg` with δ_pred/δ_std chosen on a sample for a selection rate of about `cfg.target_rate`, and the
    calibration record (actprm.uncertainty.calibrate_deltas + target and sample size). `rows`: the sample,
    when the caller has drawn it (default: `calibration_sample` rows of `sources`, by id hash)."""
    if cfg.selection != "threshold":
        raise UserError("--target-rate chooses the ActPRM rule's deltas; with --selection budget choose --budget")
    if rows is None:
        rows = sample_corpus(sources, cfg, cfg.calibration_sample, seed=cfg.seed).rows()
    loaded = loaded or load_for_scoring(cfg)
    probs, _ = score_rows(cfg, rows, loaded)
    if not probs:
        raise UserError("--target-rate: the corpus has no scorable rows to calibrate on")
    found = deltas_for_rate(probs, cfg, model_calibration(loaded[1]))
    record = {"target_rate": cfg.target_rate, **found}
    return cfg.model_copy(update={"delta_pred": found["delta_pred"], "delta_std": found["delta_std"]}), record


def deltas_for_rate(probs: list, cfg, calibration: dict | None) -> dict:
    """δ_pred/δ_std (δ_std in spread-scale units) under which about `cfg.target_rate` of these rows' head
    probabilities are uncertain (uncertainty.choose_deltas), with the model's threshold and spread scale."""
    threshold, spread = rule_constants(calibration, cfg.decision_threshold, cfg.spread_scale)
    return uncertainty.choose_deltas([uncertainty.stats_extremes(m, s / spread, threshold)
                                      for m, s in map(uncertainty.step_stats, probs)], cfg.target_rate)


def rule_summary(probs: list, ids: list, cfg, calibration: dict | None, delta_pred: float, delta_std: float) -> dict:
    """uncertainty.summarize of these rows under the deltas, with the model's threshold and spread scale."""
    threshold, spread = rule_constants(calibration, cfg.decision_threshold, cfg.spread_scale)
    return uncertainty.summarize(probs, ids, delta_pred=delta_pred, delta_std=delta_std, threshold=threshold,
                                 spread_scale=spread)


def calibration_of(model: str | None) -> dict | None:
    """The calibration record in a checkpoint directory's prm_config.json (None: none; the shipped PRM)."""
    config = Path(model or default_prm_path()) / PRM_CONFIG_NAME
    if not config.is_file():
        return None
    return check_record(json.loads(config.read_text()).get("calibration"))


def calibration_text(record: dict | None) -> str:
    if not record:
        return ""
    return (f" (target rate {record['target_rate']:.1%}: delta_pred {record['delta_pred']:.6g}, "
            f"delta_std {record['delta_std']:.6g}, {record['rate']:.1%} of {record['n']} sampled rows)")


def recalibrate(scores: list[dict[str, Any]], target_rate: float, threshold: float = 0.5,
                spread_scale: float = 1.0) -> dict[str, Any] | None:
    """δ_pred/δ_std (in units of `spread_scale`) for about `target_rate` of these scored rows (join_scores'
    columns) uncertain; their `uncertain` is redone under them. The record (`uncertainty.choose_deltas` +
    target), None if none scored."""
    ok = [sc for sc in scores if sc.get("error") is None]
    if not ok:
        return None
    stats = [(np.asarray(sc["step_mean"]), np.asarray(sc["step_std"] if sc.get("step_std") is not None
                                                      else [0.0] * len(sc["step_mean"])) / spread_scale)
             for sc in ok]
    found = uncertainty.choose_deltas([uncertainty.stats_extremes(m, s, threshold) for m, s in stats], target_rate)
    for sc, (m, s) in zip(ok, stats):
        sc["uncertain"] = uncertainty.is_uncertain(m, s, found["delta_pred"], found["delta_std"], threshold)
    return {"target_rate": target_rate, **found}


def actprm_selection(ids: list[str], ok: np.ndarray, uncertain: np.ndarray, acq: np.ndarray, budget: int | None,
                     explore: float, seed: int, *, fill: bool = True) -> np.ndarray:
    """The `actprm` strategy's mask. With a budget: the rows the rule marks, ranked by acquisition when they
    are more than the budget; when they are fewer, the rule has run dry, and the rest of the budget is spent:
    up to `ceil(explore * budget)` rows drawn at random (a seeded hash of the id) among those it calls
    certain, the remainder by acquisition. With `fill` off (stream) or no budget: the rows the rule marks plus
    an `explore` share of the labels at random (at least one row), the budget only a cap (by acquisition).
    The random rows guard against confident mistakes: a model sure that every step is right still gets the
    labels that correct it."""
    n = len(ids)
    mask = ok & uncertain
    if budget is not None and fill:
        budget = min(budget, n)
        if mask.sum() >= budget:
            return mask & uncertainty.select_budget(ids, np.where(mask, acq, np.nan), budget)
        short = int(budget - mask.sum())
        n_explore = min(short, math.ceil(explore * budget)) if explore > 0 else 0
        fill = uncertainty.select_budget(ids, np.where(ok & ~mask, acq, np.nan), short - n_explore)
        mask |= fill & ok
    else:
        n_explore = math.ceil(explore / (1 - explore) * mask.sum()) if 0 < explore < 1 else 0
        n_explore = max(n_explore, 1 if explore > 0 else 0)
    rest = ok & ~mask
    if n_explore and rest.any():
        keys = np.array([uncertainty.random_score(i, seed) if r else np.nan for i, r in zip(ids, rest)])
        mask |= uncertainty.select_budget(ids, keys, n_explore) & rest
    if budget is not None and mask.sum() > budget:  # a cap (stream: what is left of the label budget)
        mask &= uncertainty.select_budget(ids, np.where(mask, acq, np.nan), budget)
    return mask


def select_rows(strategy: str, candidates: list[dict], scores: dict[str, dict], budget: int | None, seed: int,
                round_index: int, explore: float = 0.0, fill: bool = True) -> list[dict]:
    """Selection rows (loop_selection schema) of the candidates; `budget` None = no cap (stream, actprm);
    `explore`, `fill`: the actprm strategy's random share and whether it spends the whole budget (rounds)
    or takes it as a cap (stream) (actprm_selection)."""
    ids = [r["id"] for r in candidates]
    if strategy in SCORING_STRATEGIES:
        s = [scores[i] for i in ids]
        ok = np.array([r.get("error") is None for r in s], dtype=bool)
        acq = np.array([r["acquisition"] if r.get("error") is None else np.nan for r in s], dtype=np.float64)
        if strategy == "actprm":
            mask = actprm_selection(ids, ok, np.array([bool(r.get("uncertain")) for r in s]), acq, budget, explore,
                                    seed * 7919 + round_index, fill=fill)
        else:
            mask = uncertainty.select_budget(ids, np.where(ok, acq, np.nan), budget if budget is not None else len(ids))
            mask &= ok
        cols = ("step_mean", "step_std", "pred_first_error", "uncertain", "acquisition", "n_scored_steps", "error")
        return [{"id": i, "round": round_index, **{c: sc.get(c) for c in cols}, "selected": bool(m)}
                for i, sc, m in zip(ids, s, mask)]
    if strategy == "random":
        keys = np.array([uncertainty.random_score(i, seed) for i in ids])
        mask = uncertainty.select_budget(ids, keys, budget if budget is not None else len(ids))
    else:  # full
        mask = np.ones(len(ids), dtype=bool)
        if budget is not None:
            mask = uncertainty.select_budget(ids, np.zeros(len(ids)), budget)  # ties by id: a fixed order
    return [{"id": i, "round": round_index, "selected": bool(m)} for i, m in zip(ids, mask)]
