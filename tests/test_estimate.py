"""`actprm estimate` (a sample's selection rate projected to the corpus, with an interval) and `--target-rate`
(δ_pred/δ_std chosen on a sample) on a world corpus, with a PRM whose heads give spread-out scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file, save_file

from actprm import uncertainty
from actprm.calibration import NOMINAL_SPREAD
from actprm.cli import main
from actprm.judge.prompt import render_prompt
from actprm.model import default_prm_path
from actprm.sample import BottomK
from actprm.world.arith import Generator
from pipelines.estimate import wilson_interval

N_ROWS = 1500


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(world file, PRM dir, the full corpus scored with --target-rate 0.25 (output dir))."""
    root = tmp_path_factory.mktemp("estimate")
    data = root / "world.parquet"
    pq.write_table(pa.Table.from_pylist(list(Generator(seed=3).rows(0, N_ROWS))), data)
    # the shipped PRM's heads all made equal, sharpened and slightly perturbed: scores spread over (0, 1)
    model = root / "prm"
    shutil.copytree(default_prm_path(), model)
    heads = load_file(model / "heads.safetensors")
    heads = {k: np.repeat(v[:1], v.shape[0], axis=0) for k, v in heads.items()}
    rng = np.random.default_rng(0)
    heads["W3"] = (heads["W3"] * 60 * (1 + 0.05 * rng.standard_normal(heads["W3"].shape))).astype(np.float32)
    save_file(heads, model / "heads.safetensors")
    scored = root / "scored"
    assert main(["score", "--input", str(data), "--output", str(scored), "--model", str(model), "--threads", "1",
                 "--target-rate", "0.25", "--calibration-sample", "300", "--no-progress"]) == 0
    return data, model, scored


def true_selected(scored, delta_pred, delta_std) -> int:
    """The rule on the scored rows; the PRM was never calibrated, so delta_std is in NOMINAL_SPREAD units."""
    rows = pq.read_table(scored / "scored", columns=["step_mean", "step_std"]).to_pylist()
    return sum(uncertainty.is_uncertain(np.array(r["step_mean"]), np.array(r["step_std"]) / NOMINAL_SPREAD,
                                        delta_pred, delta_std) for r in rows)


def test_estimate_projects_within_its_interval_of_the_real_count(corpus, tmp_path, capsys):
    data, model, scored = corpus
    out = tmp_path / "est"
    assert main(["estimate", "--input", str(data), "--model", str(model), "--sample", "300", "--threads", "1",
                 "--delta-pred", "0.9", "--delta-std", "4", "--price-in", "2", "--price-out", "8",
                 "--mean-output-tokens", "1000", "--output", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "selection rate:" in text and "judge requests:" in text and "estimate.json" in text
    report = json.loads((out / "estimate.json").read_text())
    p = report["projection"]
    real = true_selected(scored, 0.9, 4)
    assert 0.15 * N_ROWS < real < 0.85 * N_ROWS  # the test means something: neither none nor all
    assert report["rows_valid"] == N_ROWS and report["sample_scored"] == 300
    assert p["rows_selected_low"] <= real <= p["rows_selected_high"]
    assert p["rows_selected_high"] - p["rows_selected_low"] < 0.2 * N_ROWS
    assert p["calls"] == pytest.approx(p["rows_selected"])  # one request per row (samples 1)
    assert report["completion_tokens_per_row"] == 1000
    rows = list(Generator(seed=3).rows(0, N_ROWS))
    mean_prompt = np.mean([len(render_prompt(r["problem"], r["steps"])) / 4 for r in rows])
    assert report["prompt_tokens_per_request"] == pytest.approx(mean_prompt, rel=0.1)
    usd_per_row = (2 * report["prompt_tokens_per_request"] + 8 * 1000) / 1e6
    assert p["usd"] == pytest.approx(p["rows_selected"] * usd_per_row)
    assert p["usd_low"] <= p["usd"] <= p["usd_high"]


def test_target_rate_chooses_deltas_that_select_about_that_share(corpus):
    _, _, scored = corpus
    summary = json.loads((scored / "summary.json").read_text())
    cal = summary["calibration"]
    assert cal["target_rate"] == 0.25 and cal["n"] == 300 and abs(cal["rate"] - 0.25) < 0.03
    assert summary["delta_pred"] == cal["delta_pred"] and summary["delta_std"] == cal["delta_std"]
    assert abs(summary["selection_rate"] - 0.25) < 0.08  # on the whole corpus, from a 300-row sample
    assert summary["rows_selected"] == true_selected(scored, cal["delta_pred"], cal["delta_std"])


def test_calibrate_deltas_moves_along_the_rate_and_keeps_the_rule_valid():
    rng = np.random.default_rng(1)
    probs = [np.clip(rng.beta(0.3, 0.3, size=(rng.integers(1, 8), 1)) + rng.normal(0, 0.02, size=(1, 6)), 0, 1)
             for _ in range(400)]
    ids = [str(i) for i in range(400)]
    for target in (0.1, 0.4, 0.8):
        found = uncertainty.calibrate_deltas(probs, target)
        assert 0.5 < found["delta_pred"] <= 1.0 and found["delta_std"] >= 0
        rate = uncertainty.summarize(probs, ids, delta_pred=found["delta_pred"],
                                     delta_std=found["delta_std"])["uncertain"].mean()
        assert rate == pytest.approx(found["rate"]) and abs(rate - target) < 0.05
    with pytest.raises(ValueError):
        uncertainty.calibrate_deltas(probs, 1.5)


def test_wilson_interval_and_bottom_k_sampling():
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high and high - low == pytest.approx(0.18, abs=0.01)
    assert wilson_interval(30, 100, population=100) == (0.3, 0.3)  # the whole corpus: exact
    narrow = wilson_interval(30, 100, population=120)
    assert narrow[1] - narrow[0] < (high - low) / 2
    rows = [{"id": f"r{i}"} for i in range(1000)]
    whole = BottomK(50, seed=1)
    whole.add(rows)
    halves = BottomK(50, seed=1)
    halves.add(rows[:400])
    other = BottomK(50, seed=1)
    other.add(rows[400:])
    halves.merge(other)  # per-file samples merge into the corpus' sample
    assert [r["id"] for r in halves.rows()] == [r["id"] for r in whole.rows()] and halves.seen == whole.seen == 1000


def test_estimate_user_errors(tmp_path, capsys):
    assert main(["estimate", "--no-progress"]) == 2
    assert main(["estimate", "--input", str(tmp_path / "nothing.parquet"), "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 2
