"""The held-out recipe: calibration, the decision threshold, the balanced weight, exploration, and what a
checkpoint stores and gives back."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actprm import calibration, uncertainty
from actprm.cli import main
from actprm.config import TrainConfig
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import PRM_CONFIG_NAME, default_prm_path, load_prm
from actprm.schemas import table_from_rows
from actprm.scoring import score_trajectories
from actprm.selection import actprm_selection, select_rows
from actprm.trainer import EarlyStopping, resolve_error_weight, split_holdout
from actprm.world.arith import Generator


def toy_ensemble(rng, n_rows: int, scale: float = 1.0, shift: float = 0.0, K: int = 8):
    """Rows of 3-6 steps with a true chance q of being right per step; head logits logit(q) + noise, then
    `scale * z + shift` (a miscalibrated copy of the same ensemble when scale != 1 or shift != 0). Returns
    (per-row head probabilities, per-row step targets drawn from q, labelled first errors)."""
    probs, targets, truth = [], [], []
    for _ in range(n_rows):
        n = int(rng.integers(3, 7))
        q = rng.beta(6, 1, size=n)
        z = np.log(q / (1 - q))[:, None] + rng.normal(0, 0.3, size=(n, K))
        probs.append(1 / (1 + np.exp(-(scale * z + shift))))
        y = (rng.random(n) < q).astype(float)
        first = int(np.flatnonzero(y == 0)[0]) if (y == 0).any() else -1
        t = [1.0 if (first < 0 or i < first) else (0.0 if i == first else None) for i in range(n)]
        targets.append(t)
        truth.append(first)
    return probs, targets, truth


def routed(probs, record) -> np.ndarray:
    cal = [calibration.apply_platt(p, record["scale"], record["shift"]) for p in probs]
    return uncertainty.summarize(cal, [str(i) for i in range(len(cal))], delta_pred=0.8,
                                 delta_std=calibration.DEFAULT_DELTA_STD_UNITS, threshold=record["threshold"],
                                 spread_scale=record["spread_scale"])["uncertain"]


def test_a_miscalibrated_ensembles_rule_routes_the_same_rows_as_a_calibrated_ones():
    held = toy_ensemble(np.random.default_rng(0), 3000)
    test = toy_ensemble(np.random.default_rng(1), 2000)
    bent = [toy_ensemble(np.random.default_rng(s), n, scale=3.0, shift=-2.0)[0] for s, n in ((0, 3000), (1, 2000))]
    good = calibration.calibration_record(held[0], held[1], held[2])
    bad = calibration.calibration_record(bent[0], held[1], held[2])
    assert good["scale"] == pytest.approx(1.0, abs=0.1) and good["shift"] == pytest.approx(0.0, abs=0.15)
    assert bad["scale"] == pytest.approx(1 / 3, abs=0.04) and bad["shift"] == pytest.approx(2 / 3, abs=0.1)
    assert bad["threshold"] == pytest.approx(good["threshold"], abs=0.02)
    a, b = routed(test[0], good), routed(bent[1], bad)
    assert 0.1 < a.mean() < 0.9
    assert (a == b).mean() > 0.97
    # read raw, the miscalibrated ensemble's rule routes other rows
    raw = uncertainty.summarize(bent[1], [str(i) for i in range(len(bent[1]))], delta_pred=0.8, delta_std=0.05)
    assert (raw["uncertain"] == a).mean() < 0.9


def test_platt_on_a_handful_of_steps_stays_near_the_identity():
    scale, shift = calibration.fit_platt([2.0, 3.0], [1.0, 1.0])
    assert 0.5 < scale < 1.5 and 0 <= shift < 1.0
    assert calibration.fit_platt([], []) == (1.0, 0.0)


def test_the_threshold_maximises_processbench_f1_nearest_half_on_ties():
    means = [np.array([0.9, 0.6, 0.9]), np.array([0.9, 0.9]), np.array([0.55, 0.9])]
    # row 0: error at step 1 (mean 0.6), row 1: none, row 2: error at step 0 (mean 0.55)
    assert calibration.choose_threshold(means, [1, -1, 0]) == pytest.approx(0.61)
    assert calibration.choose_threshold([], []) == 0.5
    assert calibration.processbench_f1([1, -1, 0], [1, -1, -1]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_the_threshold_search_equals_the_step_by_step_definition():
    """choose_threshold computes every threshold's predicted first errors at once; the plain definition (first
    step whose mean is below t) picks the same threshold on random rows, weighted with ones or not."""
    def plain(means, truth):
        best, best_t = -1.0, 0.5
        for t in sorted(calibration.THRESHOLD_GRID, key=lambda v: (abs(v - 0.5), v)):
            f1 = calibration.processbench_f1(truth, [uncertainty.predicted_first_error(m, t) for m in means])
            if f1 > best + 1e-12:
                best, best_t = f1, float(t)
        return best_t

    rng = np.random.default_rng(0)
    for _ in range(60):
        means = [rng.beta(3, 1, size=rng.integers(1, 8)) for _ in range(rng.integers(1, 30))]
        truth = [int(rng.integers(-1, len(m))) for m in means]
        assert calibration.choose_threshold(means, truth) == plain(means, truth)
        assert calibration.choose_threshold(means, truth, weights=np.ones(len(means))) == plain(means, truth)


def test_weighted_f1_counts_a_row_as_often_as_its_weight():
    truth, pred = [2, 2, -1, -1, -1], [2, 0, -1, -1, 1]
    assert calibration.weighted_f1(truth, pred, [1, 1, 1, 1, 1]) == pytest.approx(
        calibration.processbench_f1(truth, pred))
    # weight 3 on the first row: the same as the row written three times
    assert calibration.weighted_f1(truth, pred, [3, 1, 1, 1, 1]) == pytest.approx(
        calibration.processbench_f1([2, 2, 2] + truth[1:], [2, 2, 2] + pred[1:]))


def test_one_standard_error_moves_the_threshold_toward_half_only_within_the_noise():
    rng = np.random.default_rng(1)
    means = [np.clip(rng.normal(0.8, 0.15, size=4), 0, 1) for _ in range(40)]
    truth = [int(np.argmax(m < 0.7)) if (m < 0.7).any() else -1 for m in means]
    best = calibration.choose_threshold(means, truth)
    loose = calibration.choose_threshold(means, truth, one_se=True)
    assert abs(loose - 0.5) <= abs(best - 0.5)
    def f1(t):
        return calibration.processbench_f1(truth, [uncertainty.predicted_first_error(m, t) for m in means])

    se = np.sqrt(f1(best) * (1 - f1(best)) / len(means))
    assert f1(loose) >= f1(best) - se - 1e-12
    # with a thousand times the rows the error is tiny: the best threshold stands
    assert calibration.choose_threshold(means * 1000, truth * 1000, one_se=True) == best


def test_platt_does_not_overshoot_from_a_far_start():
    """Most steps confidently right, a few with extreme logits and coin-flip labels (what a window of stale
    scores looks like): the undamped Newton step went to scale 2249, shift -76; the damped one descends to the
    fit's optimum, where no small move lowers the objective."""
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.normal(3, 1, 3000), rng.normal(-30, 5, 300)])
    y = np.concatenate([np.ones(3000), (rng.random(300) < 0.5).astype(float)])

    def objective(a, b):
        u = a * z + b
        return float(np.sum(np.logaddexp(0, u) - y * u) + (a - 1) ** 2 + b * b)

    scale, shift = calibration.fit_platt(z, y)
    assert np.isfinite([scale, shift]).all() and scale < 10
    here = objective(scale, shift)
    for da, db in ((0.01, 0), (-0.01, 0), (0, 0.05), (0, -0.05)):
        assert here <= objective(scale + da, shift + db)


def test_bad_records_are_refused():
    assert calibration.check_record(None) is None
    ok = {"scale": 1.0, "shift": 0.0, "spread_scale": 0.01, "threshold": 0.6}
    assert calibration.check_record(ok) == ok
    for bad in ({**ok, "scale": -1}, {**ok, "threshold": 1.0}, {**ok, "shift": float("nan")}, {**ok, "spread_scale": "x"},
                [1, 2]):
        with pytest.raises(ValueError):
            calibration.check_record(bad)


def test_the_rule_reads_certainty_against_the_threshold():
    # at a threshold of 0.9 a step at 0.85 is predicted wrong yet likely right: uncertain at delta_pred 0.8
    mean, std = np.array([0.95, 0.85]), np.zeros(2)
    assert not uncertainty.is_uncertain(mean, std, 0.8, 1.0, threshold=0.5)
    assert uncertainty.is_uncertain(mean, std, 0.8, 1.0, threshold=0.9)
    assert not uncertainty.is_uncertain(np.array([0.95, 0.1]), std, 0.8, 1.0, threshold=0.9)


def test_the_holdout_split_is_stable_and_needs_rows_on_both_sides():
    rows = [{"id": f"r{i}"} for i in range(500)]
    train, held = split_holdout(rows, 0.2)
    assert 70 < len(held) < 130 and len(train) + len(held) == 500
    again_train, again_held = split_holdout(rows[:250] + [{"id": "new"}] + rows[250:], 0.2)
    assert {r["id"] for r in held} <= {r["id"] for r in again_held}  # a row keeps its side as labels grow
    assert split_holdout(rows[:6], 0.2) == (rows[:6], [])
    assert split_holdout(rows, 0.0) == (rows, [])


def test_balanced_error_weight_is_the_labels_own_ratio():
    cfg = TrainConfig()
    assert cfg.error_weight == "balanced" and cfg.prior_bias and cfg.holdout == 0.2
    assert resolve_error_weight(cfg, [[1.0, 1.0, 0.0, None], [1.0, 1.0]]) == 4.0
    assert resolve_error_weight(cfg, [[1.0, 1.0]]) == 1.0
    assert resolve_error_weight(cfg, [[1.0] * 200 + [0.0]]) == 50.0
    assert resolve_error_weight(TrainConfig(error_weight=3.0), [[1.0, 0.0]]) == 3.0


def test_early_stopping_keeps_the_best_pass():
    w = torch.nn.Parameter(torch.zeros(1, 1))
    module = torch.nn.Module()
    module.w = w
    opt = torch.optim.SGD([w], lr=1.0)
    values = iter([0.0, 2.0, 4.0, 6.0, 8.0])  # the held-out logit after each pass: best at pass 2 (logit 2)
    stop = EarlyStopping(module, opt, lambda: [torch.full((1, 1), float(w.item()))], [[1.0]], 1.0, patience=2)
    passes = 0
    for epoch in range(1, 6):
        with torch.no_grad():
            w.fill_(next(values))
        passes += 1
        if stop(epoch):
            break
    assert passes == 5 and stop.best_epoch == 5  # the loss keeps falling: no stop
    targets_wrong = EarlyStopping(module, opt, lambda: [torch.full((1, 1), float(w.item()))], [[0.0]], 1.0, 2)
    for epoch, v in enumerate([-3.0, -1.0, 1.0, 2.0], start=1):
        with torch.no_grad():
            w.fill_(v)
        if targets_wrong(epoch):
            break
    assert epoch == 3 and targets_wrong.best_epoch == 1
    targets_wrong.restore()
    assert w.item() == -3.0


def test_exploration_reaches_a_model_that_is_confidently_wrong():
    """The model calls every row certain and correct: without exploration the rule buys nothing (stream) or
    only the acquisition's top (rounds); with it, a random share of every budget goes to other rows."""
    n = 1000
    ids = [f"r{i:04d}" for i in range(n)]
    ok = np.ones(n, dtype=bool)
    uncertain = np.zeros(n, dtype=bool)
    acq = np.linspace(0.01, 0.02, n)  # tiny entropies: confident everywhere
    top = set(np.argsort(-acq)[:90])
    mask = actprm_selection(ids, ok, uncertain, acq, 100, 0.1, seed=3)
    assert mask.sum() == 100  # the budget is spent
    outside = [i for i in np.flatnonzero(mask) if i not in top]
    assert len(outside) == 10  # 10% at random, the rest the acquisition's next
    assert actprm_selection(ids, ok, uncertain, acq, 100, 0.0, seed=3).sum() == 100
    assert actprm_selection(ids, ok, uncertain, acq, None, 0.0, seed=3).sum() == 0  # stream, no exploration
    assert actprm_selection(ids, ok, uncertain, acq, None, 0.1, seed=3).sum() == 1
    # stream: 10% of the labels at random beside the rule's rows
    some = np.zeros(n, dtype=bool)
    some[:90] = True
    m = actprm_selection(ids, ok, some, acq, None, 0.1, seed=3)
    assert m[:90].all() and m.sum() == 100
    # while the rule marks at least the budget, nothing is drawn at random: the top of its rows by acquisition
    many = np.zeros(n, dtype=bool)
    many[:200] = True
    m = actprm_selection(ids, ok, many, acq, 100, 0.1, seed=3)
    assert m.sum() == 100 and not m[200:].any() and m[100:200].all()  # acq rises with the index
    # five short of the budget: those five at random among the certain rows
    few = np.zeros(n, dtype=bool)
    few[:95] = True
    m = actprm_selection(ids, ok, few, acq, 100, 0.1, seed=3)
    assert m[:95].all() and m.sum() == 100
    assert set(np.flatnonzero(m[95:]) + 95) != set(range(995, 1000))  # not the acquisition's top
    # stream: what is left of the label budget is a cap, not a target
    three = np.zeros(n, dtype=bool)
    three[[5, 50, 500]] = True
    assert actprm_selection(ids, ok, three, acq, 5000, 0.1, seed=3, fill=False).sum() == 4
    capped = actprm_selection(ids, ok, three, acq, 2, 0.1, seed=3, fill=False)
    assert capped.sum() == 2 and capped[500]  # the cap keeps the top by acquisition
    # the loop's selection rows carry it
    scores = {i: {"acquisition": float(a), "uncertain": False, "error": None} for i, a in zip(ids, acq)}
    rows = select_rows("actprm", [{"id": i} for i in ids], scores, 100, 0, 1, explore=0.1)
    assert sum(r["selected"] for r in rows) == 100


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`actprm train` with its defaults on 200 world rows labelled by the noisy verifier."""
    d = tmp_path_factory.mktemp("cal")
    rows = list(Generator(seed=5).rows(0, 200))
    pq.write_table(table_from_rows(rows, "trajectories"), d / "traj.parquet")
    (d / "ann").mkdir()
    pq.write_table(table_from_rows(VerifierAnnotator(wrong_rate=0.18).annotate(rows), "annotations"),
                   d / "ann" / "a.parquet")
    assert main(["train", "--trajectories", str(d / "traj.parquet"), "--annotations", str(d / "ann"),
                 "--output", str(d / "model"), "--no-progress", "--threads", "2"]) == 0
    return d, rows


def test_the_threshold_is_stored_and_read_back(trained):
    d, rows = trained
    record = json.loads((d / "model" / PRM_CONFIG_NAME).read_text())["calibration"]
    state = json.loads((d / "model" / "trainer_state.json").read_text())
    assert state["calibration"] == record and state["held_out"] > 0 and state["stopping"]["best_epoch"] >= 1
    assert 0 < record["threshold"] < 1 and record["scale"] > 0 and record["held_out_rows"] == state["held_out"]
    model, tok = load_prm(d / "model")
    assert model.heads.calibration == record
    # the scorer reads calibrated probabilities: the heads' logits through (scale, shift)
    res = score_trajectories(model, tok, [rows[0]["problem"]], [rows[0]["steps"]])[0]
    model.heads.calibration = None
    raw = score_trajectories(model, tok, [rows[0]["problem"]], [rows[0]["steps"]])[0]
    z = np.log(raw.probs / (1 - raw.probs))
    assert np.allclose(res.probs, 1 / (1 + np.exp(-(record["scale"] * z + record["shift"]))), atol=1e-5)
    # a model never calibrated: none
    assert load_prm(default_prm_path())[0].heads.calibration is None


def test_evaluate_and_score_use_the_checkpoints_threshold(trained, tmp_path, capsys):
    d, rows = trained
    record = json.loads((d / "model" / PRM_CONFIG_NAME).read_text())["calibration"]
    assert main(["evaluate", "--data", str(d / "traj.parquet"), "--model", str(d / "model"),
                 "--output", str(tmp_path / "ev"), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["threshold"] == 0.5 and metrics["checkpoint_threshold"]["threshold"] == record["threshold"]
    assert f"the checkpoint's threshold {record['threshold']:.2f}" in line
    assert main(["score", "--input", str(d / "traj.parquet"), "--model", str(d / "model"),
                 "--output", str(tmp_path / "sc"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "sc" / "summary.json").read_text())
    assert summary["decision_threshold"] == record["threshold"] and summary["spread_scale"] == record["spread_scale"]
    scored = pq.read_table(tmp_path / "sc" / "scored").to_pylist()
    for r in scored[:50]:
        assert r["pred_first_error"] == uncertainty.predicted_first_error(np.array(r["step_mean"]), record["threshold"])
    assert main(["score", "--input", str(d / "traj.parquet"), "--model", str(d / "model"), "--decision-threshold",
                 "0.5", "--output", str(tmp_path / "sc5"), "--no-progress"]) == 0
    half = pq.read_table(tmp_path / "sc5" / "scored").to_pylist()
    for r in half[:50]:
        assert r["pred_first_error"] == uncertainty.predicted_first_error(np.array(r["step_mean"]), 0.5)
