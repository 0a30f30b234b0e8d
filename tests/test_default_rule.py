"""The default rule on a model trained by actprm's recipe: a falling minority routed, read through the checkpoint's
calibration; the paper's deltas send nearly everything."""

from __future__ import annotations

import copy

import numpy as np
import torch

from actprm import calibration, uncertainty
from actprm.config import LoopConfig, RuleSettings, TrainConfig
from actprm.features import (
    cached_examples,
    extract_head_inputs,
    score_cached,
    train_heads_cached,
)
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import default_prm_path, load_prm
from actprm.trainer import split_holdout
from actprm.world.arith import Generator


def uncertain_share(probs, delta_pred: float, delta_std: float, threshold: float = 0.5,
                    spread_scale: float = 1.0) -> float:
    return float(np.mean([uncertainty.is_uncertain(m, s / spread_scale, delta_pred, delta_std, threshold)
                          for m, s in map(uncertainty.step_stats, probs)]))


def test_the_default_deltas_are_the_configs_defaults():
    for cfg in (RuleSettings(), LoopConfig()):
        assert (cfg.delta_pred, cfg.delta_std) == (uncertainty.DEFAULT_DELTA_PRED, calibration.DEFAULT_DELTA_STD_UNITS)
    assert (uncertainty.PAPER_DELTA_PRED, uncertainty.PAPER_DELTA_STD) == (0.95, 0.005)
    # a model no round calibrated reads delta_std in the old absolute units
    assert calibration.DEFAULT_DELTA_STD_UNITS * calibration.NOMINAL_SPREAD == uncertainty.DEFAULT_DELTA_STD


def test_the_default_rule_routes_a_falling_minority_of_a_trained_toy_model():
    """The shipped PRM's heads trained with the default recipe (held-out stopping, calibration) on 150, then 300,
    then 600 world rows labelled by the 18%-wrong verifier, continuing; the rule scores 300 other rows after each."""
    torch.manual_seed(0)
    model, tok = load_prm(str(default_prm_path()))
    model = model.float()
    rows = list(Generator(seed=11).rows(0, 900))
    cache = extract_head_inputs(model, tok, rows)
    judge = VerifierAnnotator(wrong_rate=0.18)
    labels = [judge.answer(r["id"], r["first_error_step"], len(r["steps"]), 0) for r in rows[:600]]
    assert sum(a != r["first_error_step"] for a, r in zip(labels, rows)) > 60  # the judge is noisy
    heads = copy.deepcopy(model.heads)
    anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    state, shares, paper = None, [], []
    for r, n in enumerate((150, 300, 600)):
        cfg = TrainConfig(dtype="float32", device="cpu", seed=r)
        ids = [{"id": rows[i]["id"], "i": i} for i in range(n)]
        train, held = split_holdout(ids, cfg.holdout)
        assert held, "the default recipe holds rows out"
        ex = cached_examples(cache, [x["i"] for x in train], [labels[x["i"]] for x in train])
        hx = cached_examples(cache, [x["i"] for x in held], [labels[x["i"]] for x in held])
        result, state = train_heads_cached(heads, cache, ex, cfg, anchor=anchor, optimizer_state=state, holdout=hx)
        assert result.calibration is heads.calibration is not None
        threshold, spread = calibration.rule_constants(heads.calibration)
        unseen = score_cached(heads, cache)[600:]
        shares.append(uncertain_share(unseen, uncertainty.DEFAULT_DELTA_PRED, calibration.DEFAULT_DELTA_STD_UNITS,
                                      threshold, spread))
        heads.calibration, cal = None, heads.calibration  # the paper's rule reads the raw probabilities
        paper.append(uncertain_share(score_cached(heads, cache)[600:], uncertainty.PAPER_DELTA_PRED,
                                     uncertainty.PAPER_DELTA_STD))
        heads.calibration = cal
    assert shares[-1] < 0.5, shares  # measured: 0.62, 0.46, 0.32
    assert shares[-1] < shares[0] - 0.1, shares  # falling as the heads learn
    assert min(paper) > 0.9, paper  # 0.95 / 0.005 send (nearly) everything to the judge
