"""The backbone and default PRM shipped in the package, and the recipe that rebuilds them."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.model import default_backbone_path, default_prm_path, load_prm
from actprm.scoring import TrajectoryEncoder, score_trajectories
from actprm.world.arith import Generator
from pipelines import pretrain_backbone as recipe


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_backbone_is_a_small_safetensors_causal_lm_that_learned_the_arithmetic():
    from transformers import Qwen2ForCausalLM

    path = default_backbone_path()
    weights = path / "model.safetensors"
    assert weights.is_file() and weights.stat().st_size <= 10 * 2**20
    assert not list(path.glob("*.bin"))
    model = Qwen2ForCausalLM.from_pretrained(path, use_safetensors=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied: one copy
    report = json.loads((path / "pretrain.json").read_text())
    assert report["config"]["steps"] == len(report["history"]) * report["config"]["eval_every"]
    # held-out solutions it never saw (lm split, far from the training rows)
    from actprm.tokens import load_tokenizer

    tokenizer = load_tokenizer(path)
    rows = list(Generator(seed=11).rows(0, 60, "lm"))
    seqs = recipe.encode_rows(TrajectoryEncoder(tokenizer), rows)
    acc = recipe.accuracy(model, seqs, recipe.Masks(tokenizer), tokenizer.pad_token_id)
    assert acc["result_digit_accuracy"] >= 0.9, acc
    assert abs(acc["result_digit_accuracy"] - report["final"]["result_digit_accuracy"]) < 0.05


def test_default_prm_loads_offline_and_scores_identically_twice():
    rows = list(Generator(seed=1).rows(0, 40))
    problems, steps = [r["problem"] for r in rows], [r["steps"] for r in rows]
    scores = []
    for _ in range(2):
        model, tokenizer = load_prm(default_prm_path())
        assert model.n_heads == 8
        scores.append(score_trajectories(model, tokenizer, problems, steps))
    for a, b in zip(*scores):
        assert a.probs.shape == (len(a.probs), 8)
        assert np.array_equal(a.probs, b.probs)
    # the heads are seeded, not copies of one another: the ensemble has a spread
    assert max(float(r.std.max()) for r in scores[0]) > 1e-3


def test_score_uses_the_default_prm_without_model(tmp_path, capsys):
    data = tmp_path / "world"
    assert main(["generate", "--n", "30", "--output", str(data), "--no-progress"]) == 0
    assert main(["score", "--input", str(data), "--output", str(tmp_path / "scored"), "--no-progress"]) == 0
    assert "30 " in capsys.readouterr().out
    table = pq.read_table(tmp_path / "scored" / "scored")
    assert table.num_rows == 30
    assert set(table["prm_model"].to_pylist()) == {"actprm/assets/prm"}


def test_recipe_rebuilds_a_loadable_backbone_and_prm(tmp_path):
    from actprm.config import PretrainConfig

    cfg = PretrainConfig(train_rows=64, test_rows=8, steps=4, batch_size=8, eval_every=2, warmup_steps=1,
                         output=str(tmp_path / "bb"), prm_output=str(tmp_path / "prm"), n_heads=3)
    report = recipe.run(cfg, progress=False, log=lambda s: None)
    assert [h["step"] for h in report["history"]] == [2, 4]
    prm, _ = load_prm(tmp_path / "prm")
    assert prm.n_heads == 3
    assert json.loads((tmp_path / "bb" / "pretrain.json").read_text())["config"]["steps"] == 4
    with pytest.raises(Exception, match="--overwrite"):
        recipe.run(cfg, progress=False, log=lambda s: None)
