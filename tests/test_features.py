"""Cached backbone outputs (actprm.features): the same scores and the same trained heads as the uncached path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from actprm.config import TrainConfig
from actprm.features import (
    HeadInputs,
    HeadInputStore,
    cached_examples,
    extract_head_inputs,
    model_fingerprint,
    score_cached,
    train_heads_cached,
)
from actprm.labels import LabelCounts
from actprm.model import default_prm_path, load_prm
from actprm.scoring import TrajectoryEncoder, score_trajectories
from actprm.trainer import build_examples, train_round
from actprm.world.arith import Generator


@pytest.fixture(scope="module")
def prm():
    model, tok = load_prm(str(default_prm_path()))
    return model.float(), tok


@pytest.fixture(scope="module")
def rows():
    return list(Generator(seed=5).rows(0, 48))


def test_cached_scores_equal_the_uncached_path(prm, rows):
    model, tok = prm
    cache = extract_head_inputs(model, tok, rows, batch_tokens=700)  # other batches than the scorer's
    direct = score_trajectories(model, tok, [r["problem"] for r in rows], [r["steps"] for r in rows],
                                batch_tokens=4096)
    cached = score_cached(model.heads, cache)
    assert len(cached) == len(rows) and cache.ids == [r["id"] for r in rows]
    for d, c, r in zip(direct, cached, rows):
        assert c.shape == d.probs.shape == (len(r["steps"]), model.n_heads)
        np.testing.assert_allclose(c, d.probs, atol=1e-5, rtol=0)
    # the heads' inputs are the separators' hidden states + 2 step features
    assert cache.x.shape == (sum(len(r["steps"]) for r in rows), model.heads.hidden_size)


def test_heads_trained_on_the_cache_equal_the_frozen_backbone_round(prm, rows):
    model, tok = prm
    labels = [r["first_error_step"] for r in rows]
    labels[3] = 0 if labels[3] != 0 else -1  # a few labels that disagree with the text, as a judge's would
    cfg = TrainConfig(dtype="float32", backbone="frozen", head_lr=1e-2, epochs=3, batch_size=8, warmup_steps=2,
                      learning_probability=0.5, anchor_lambda=0.5, seed=3, device="cpu")
    # uncached: actprm.trainer's round on the full PRM
    full = copy.deepcopy(model)
    anchor = {k: v.detach().clone() for k, v in full.heads.state_dict().items()}
    counts = LabelCounts()
    labelled = [{"problem": r["problem"], "steps": r["steps"], "label_first_error": y, "label_weight": 1.0}
                for r, y in zip(rows, labels)]
    examples = build_examples(labelled, TrajectoryEncoder(tok, max_length=full.max_length), counts)
    res_full, _ = train_round(full, tok, examples, cfg, device=torch.device("cpu"), anchor=anchor)
    # cached
    heads = copy.deepcopy(model.heads)
    cache = extract_head_inputs(model, tok, rows)
    res_cached, opt_state = train_heads_cached(heads, cache, cached_examples(cache, range(len(rows)), labels), cfg,
                                               anchor=anchor)
    assert res_cached.steps == res_full.steps > 0
    np.testing.assert_allclose(res_cached.losses, res_full.losses, atol=1e-4)
    for name, p in heads.state_dict().items():
        start = anchor[name]
        moved = (full.heads.state_dict()[name] - start).abs().max().item()
        assert moved > 1e-3 or name.startswith("b")  # the round did train
        torch.testing.assert_close(p, full.heads.state_dict()[name], atol=1e-5, rtol=1e-4)
    assert {"heads.W1::exp_avg", "heads.b3::step"} <= set(opt_state)


def test_class_weighting_and_bootstrap_change_the_round(prm, rows):
    model, tok = prm
    cache = extract_head_inputs(model, tok, rows[:16])
    labels = [r["first_error_step"] for r in rows[:16]]
    cfg = TrainConfig(dtype="float32", backbone="frozen", head_lr=1e-2, epochs=2, batch_size=8, warmup_steps=0, anchor_lambda=0.0)
    anchor = {k: v.detach().clone() for k, v in model.heads.state_dict().items()}
    outs = []
    for kw in ({}, {"error_weight": 3.0}, {"bootstrap": True}, {"feature_dropout": 0.2}):
        heads = copy.deepcopy(model.heads)
        train_heads_cached(heads, cache, cached_examples(cache, range(16), labels), cfg, anchor=anchor, **kw)
        outs.append(heads.W1.detach().clone())
    for other in outs[1:]:
        assert (other - outs[0]).abs().max() > 1e-6


def test_save_load_and_store(prm, rows, tmp_path):
    model, tok = prm
    cache = extract_head_inputs(model, tok, rows[:10])
    path = cache.save(tmp_path / "c.safetensors")
    back = HeadInputs.load(path, fingerprint=model_fingerprint(model))
    assert back.ids == cache.ids and torch.equal(back.x, cache.x)
    assert np.array_equal(back.offsets, cache.offsets) and np.array_equal(back.lengths, cache.lengths)
    with pytest.raises(ValueError, match="cached for model"):
        HeadInputs.load(path, fingerprint="0" * 16)
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1e-3)
    assert model_fingerprint(other) != model_fingerprint(model)
    # the store computes a row once per model, and returns rows in the order asked
    store = HeadInputStore()
    a = store.get(model, tok, rows[:6])
    b = store.get(model, tok, rows[4:10])
    assert len(store._caches[model_fingerprint(model)]) == 2  # the second call computed rows 6..9 only
    assert len(store._caches[model_fingerprint(model)][1]) == 4
    assert b.ids == [r["id"] for r in rows[4:10]]
    torch.testing.assert_close(b.rows([0, 1]).x, a.rows([4, 5]).x)
    torch.testing.assert_close(b.x, cache.rows(range(4, 10)).x, atol=1e-5, rtol=0)


def test_many_runs_in_lockstep_equal_each_run_alone(prm, rows):
    from actprm.features import HeadRun, train_heads_cached_many

    model, tok = prm
    cache = extract_head_inputs(model, tok, rows[:40])
    # weights compared exactly with a fixed error weight and no prior bias: AdamW turns float noise in a gradient
    # near zero into a full step, and the balanced weight makes more of them (its losses are compared below)
    cfg = TrainConfig(dtype="float32", backbone="frozen", head_lr=1e-2, epochs=2, batch_size=8, warmup_steps=2,
                      learning_probability=0.7, anchor_lambda=0.3, grad_clip=0.05,  # clipping is active
                      error_weight=1.0, prior_bias=False)
    anchor = {k: v.detach().clone() for k, v in model.heads.state_dict().items()}
    labels = [r["first_error_step"] for r in rows[:40]]
    picks = [list(range(0, 30)), list(range(10, 40)), list(range(5, 35))]  # three learners, own rows
    balanced = cfg.model_copy(update={"error_weight": "balanced", "prior_bias": True})
    many = [HeadRun(copy.deepcopy(model.heads), cached_examples(cache, idx, [labels[i] for i in idx]), anchor, seed=s)
            for s, idx in enumerate(picks)]
    train_heads_cached_many(many, cache, balanced)
    for s, run in enumerate(many):  # each run its own balanced weight and prior-bias start, as alone
        res, _ = train_heads_cached(copy.deepcopy(model.heads), cache, run.examples,
                                    balanced.model_copy(update={"seed": s}), anchor=anchor)
        np.testing.assert_allclose(run.result.losses, res.losses, atol=1e-4)
    runs, alone = [], []
    for seed, idx in enumerate(picks):
        ex = cached_examples(cache, idx, [labels[i] for i in idx])
        runs.append(HeadRun(copy.deepcopy(model.heads), ex, anchor, seed=seed))
        h = copy.deepcopy(model.heads)
        res, state = train_heads_cached(h, cache, ex, cfg.model_copy(update={"seed": seed}), anchor=anchor)
        alone.append((h, res, state))
    for _round in range(2):  # the second round continues the optimizer state
        train_heads_cached_many(runs, cache, cfg)
        if _round == 0:
            for i, (h, res, state) in enumerate(alone):
                np.testing.assert_allclose(runs[i].result.losses, res.losses, atol=1e-4)
                for name, p in h.state_dict().items():
                    torch.testing.assert_close(runs[i].heads.state_dict()[name], p, atol=1e-5, rtol=1e-4)
                for k, v in state.items():
                    torch.testing.assert_close(runs[i].optimizer_state[k], v, atol=1e-6, rtol=1e-3)
            alone = [(h, *train_heads_cached(h, cache, runs[i].examples, cfg.model_copy(update={"seed": i}),
                                             anchor=anchor, optimizer_state=state))
                     for i, (h, _, state) in enumerate(alone)]
    for i, (h, _, _) in enumerate(alone):
        for name, p in h.state_dict().items():
            torch.testing.assert_close(runs[i].heads.state_dict()[name], p, atol=1e-5, rtol=1e-4)


def test_error_weight_and_prior_bias_same_in_both_trainers(prm, rows):
    model, tok = prm
    sub = rows[:16]
    labels = [r["first_error_step"] for r in sub]
    cfg = TrainConfig(dtype="float32", backbone="frozen", head_lr=1e-2, epochs=1, batch_size=8, warmup_steps=0, anchor_lambda=0.0,
                      error_weight=3.0, prior_bias=True, seed=1, device="cpu")
    full = copy.deepcopy(model)
    anchor = {k: v.detach().clone() for k, v in full.heads.state_dict().items()}
    labelled = [{"problem": r["problem"], "steps": r["steps"], "label_first_error": y} for r, y in zip(sub, labels)]
    examples = build_examples(labelled, TrajectoryEncoder(tok, max_length=full.max_length), LabelCounts())
    train_round(full, tok, examples, cfg, device=torch.device("cpu"), anchor=anchor)
    heads = copy.deepcopy(model.heads)
    cache = extract_head_inputs(model, tok, sub)
    train_heads_cached(heads, cache, cached_examples(cache, range(16), labels), cfg, anchor=anchor)
    for name, p in heads.state_dict().items():
        torch.testing.assert_close(p, full.heads.state_dict()[name], atol=1e-5, rtol=1e-4)
    # the prior moved the output bias well above 0 (most labelled steps are correct) ...
    assert full.heads.b3.min() > 1.0
    # ... and the weighting changed the round
    plain = copy.deepcopy(model.heads)
    train_heads_cached(plain, cache, cached_examples(cache, range(16), labels),
                       cfg.model_copy(update={"error_weight": 1.0}), anchor=anchor)
    assert (plain.W1 - heads.W1).abs().max() > 1e-6
