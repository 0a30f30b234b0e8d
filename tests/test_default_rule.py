"""The default rule routes a minority once the PRM has learned, with a noisy judge; the paper's deltas do not."""

from __future__ import annotations

import copy

import numpy as np
import torch

from actprm import uncertainty
from actprm.config import LoopConfig, RuleSettings, TrainConfig
from actprm.features import (
    cached_examples,
    extract_head_inputs,
    score_cached,
    train_heads_cached,
)
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import default_prm_path, load_prm
from actprm.world.arith import Generator


def uncertain_share(probs, delta_pred: float, delta_std: float) -> float:
    return float(np.mean([uncertainty.is_uncertain(*uncertainty.step_stats(p), delta_pred, delta_std)
                          for p in probs]))


def test_the_default_deltas_are_the_configs_defaults():
    for cfg in (RuleSettings(), LoopConfig()):
        assert (cfg.delta_pred, cfg.delta_std) == (uncertainty.DEFAULT_DELTA_PRED, uncertainty.DEFAULT_DELTA_STD)
    assert (uncertainty.PAPER_DELTA_PRED, uncertainty.PAPER_DELTA_STD) == (0.95, 0.005)


def test_the_default_rule_routes_a_falling_minority_of_a_trained_toy_model():
    """The shipped PRM's heads trained (3 rounds of 8 epochs, as the loop does) on 500 world rows labelled by
    the 18%-wrong verifier; the rule scores 200 held-out rows after each round."""
    torch.manual_seed(0)
    model, tok = load_prm(str(default_prm_path()))
    model = model.float()
    rows = list(Generator(seed=11).rows(0, 700))
    cache = extract_head_inputs(model, tok, rows)
    judge = VerifierAnnotator(wrong_rate=0.18)
    labels = [judge.answer(r["id"], r["first_error_step"], len(r["steps"]), 0) for r in rows[:500]]
    assert sum(a != r["first_error_step"] for a, r in zip(labels, rows)) > 60  # the judge is noisy
    heads = copy.deepcopy(model.heads)
    anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    examples = cached_examples(cache, range(500), labels)
    state, shares, paper = None, [], []
    for r in range(3):
        cfg = TrainConfig(dtype="float32", backbone="frozen", head_lr=1e-2, epochs=8, batch_size=16, warmup_steps=5,
                          anchor_lambda=0.0, seed=r)
        _, state = train_heads_cached(heads, cache, examples, cfg, anchor=anchor, optimizer_state=state)
        held_out = score_cached(heads, cache)[500:]
        shares.append(uncertain_share(held_out, uncertainty.DEFAULT_DELTA_PRED, uncertainty.DEFAULT_DELTA_STD))
        paper.append(uncertain_share(held_out, uncertainty.PAPER_DELTA_PRED, uncertainty.PAPER_DELTA_STD))
    assert all(s < 0.5 for s in shares), shares  # measured: 0.445, 0.31, 0.215
    assert shares[-1] < shares[0] - 0.1, shares  # falling as the heads learn
    assert min(paper) > 0.9, paper  # 0.95 / 0.005 send (nearly) everything to the judge
