"""`actprm evaluate`: the ProcessBench metric by hand, step AUROC/ECE, the threshold sweep, the job end to end."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.metrics import (
    THRESHOLD_GRID,
    auroc,
    best_threshold,
    compute_metrics,
    expected_calibration_error,
    f1_by_threshold,
    mean_f1,
    predict_first_error,
    predictions_at,
    processbench_scores,
    step_labels,
)
from actprm.schemas import arrow_schema

# ------------------------------------------------------------------ the ProcessBench metric


def test_processbench_scores_by_hand():
    # 3 error items, 2 predicted exactly; 2 correct items, 1 predicted -1
    s = processbench_scores([2, 0, 1, -1, -1], [2, 0, 3, -1, 1])
    assert s == {"error_acc": pytest.approx(2 / 3), "correct_acc": 0.5, "f1": pytest.approx(4 / 7),
                 "n": 5, "n_error": 3, "n_correct": 2}
    # a zero side: F1 0; both zero: F1 0 (not a division by zero)
    assert processbench_scores([0, -1], [1, -1])["f1"] == 0.0
    assert processbench_scores([0, -1], [-1, 0]) | {} == {"error_acc": 0.0, "correct_acc": 0.0, "f1": 0.0,
                                                          "n": 2, "n_error": 1, "n_correct": 1}
    # a side with no items: no accuracy, no F1 (the official script gives NaN)
    only_correct = processbench_scores([-1, -1], [-1, 3])
    assert only_correct["error_acc"] is None and only_correct["f1"] is None and only_correct["correct_acc"] == 0.5
    # mean over subsets: unweighted, over the subsets that have an F1
    assert mean_f1([{"f1": 4 / 7}, {"f1": 0.0}, only_correct]) == pytest.approx(2 / 7)
    assert mean_f1([only_correct]) is None


def test_processbench_scores_match_the_official_formula_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(-1, 6, 200)
        preds = np.where(rng.random(200) < 0.5, labels, rng.integers(-1, 6, 200))
        # QwenLM/ProcessBench code/run_eval_*.py, in percent
        acc1 = np.mean([p == y for y, p in zip(labels, preds) if y != -1]) * 100
        acc2 = np.mean([p == y for y, p in zip(labels, preds) if y == -1]) * 100
        f1 = 2 * acc1 * acc2 / (acc1 + acc2)
        s = processbench_scores(labels, preds)
        assert (100 * s["error_acc"], 100 * s["correct_acc"], 100 * s["f1"]) == pytest.approx((acc1, acc2, f1))


def test_predict_first_error_is_strictly_below_the_threshold():
    assert predict_first_error([0.9, 0.5, 0.4], 0.5) == 2  # 0.5 is not < 0.5
    assert predict_first_error([0.9, 0.49999, 0.4], 0.5) == 1
    assert predict_first_error([0.9, 0.8], 0.5) == -1
    assert predict_first_error([], 0.5) == -1  # no scored step
    assert predict_first_error([0.1], 0.1) == -1 and predict_first_error([0.1], 0.11) == 0
    # float32 means are compared as stored, in float64: float32(0.3) > 0.3
    assert predict_first_error(np.array([0.3], dtype=np.float32), 0.3) == -1
    assert list(predictions_at([[0.9, 0.2], [0.7], []], 0.75)) == [1, 0, -1]


def test_step_labels_are_the_actprm_training_rule():
    assert step_labels(-1, 3).tolist() == [1, 1, 1]
    assert step_labels(0, 3).tolist() == [0]
    assert step_labels(2, 4).tolist() == [1, 1, 0]
    for bad in (3, -2):
        with pytest.raises(ValueError):
            step_labels(bad, 3)


# ------------------------------------------------------------------ step metrics


def test_auroc_against_a_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(1)
    for n in (2, 7, 50, 300):
        scores = np.round(rng.random(n), 1)  # many ties
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            labels[0] = 1 - labels[0]
        pos, neg = scores[labels == 1], scores[labels == 0]
        brute = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (pos.size * neg.size)
        assert auroc(scores, labels) == pytest.approx(brute)
    assert auroc([0.1, 0.2, 0.9], [0, 0, 1]) == 1.0
    assert auroc([0.9, 0.2], [0, 1]) == 0.0
    assert auroc([0.5, 0.5], [0, 1]) == 0.5
    assert auroc([0.1, 0.2], [1, 1]) is None and auroc([], []) is None


def test_expected_calibration_error_by_hand():
    # bins of width 0.1: [0.05] y=0 -> gap .05; [0.15] y=1 -> .85; [0.95, 0.95] y=1,0 -> .45 with weight 2
    assert expected_calibration_error([0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0]) == pytest.approx((0.05 + 0.85 + 0.9) / 4)
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # 1.0 lands in the last bin
    assert expected_calibration_error([0.3, 0.7], [0, 1], bins=1) == pytest.approx(0.0)
    assert expected_calibration_error([], []) is None


# ------------------------------------------------------------------ threshold sweep


def test_sweep_picks_the_best_threshold_and_breaks_ties_towards_half():
    means = [[0.9, 0.3, 0.2],  # label 1: right iff 0.3 < t <= 0.9
             [0.8, 0.6],       # label -1: right iff t <= 0.6
             [0.35],           # label 0: right iff t > 0.35
             [0.7, 0.4]]       # label -1: right iff t <= 0.4
    labels = [1, -1, 0, -1]
    # F1 = 1 for t in 0.36..0.40 (0.40 included: 0.4 is not < 0.4); the closest to 0.5 is 0.40
    assert best_threshold(means, labels) == (0.4, 1.0)
    f1 = f1_by_threshold(means, labels)
    assert [round(t, 2) for t in THRESHOLD_GRID[f1 == 1.0]] == [0.36, 0.37, 0.38, 0.39, 0.4]
    # an optimum above 0.5: its lowest end is the closest
    assert best_threshold([[0.55], [0.9, 0.7]], [0, -1]) == (0.56, 1.0)
    # equally close to 0.5 on both sides (0.45 and 0.55 differ from 0.5 by different floats): the lower one
    assert best_threshold([[0.4], [0.6]], [0, -1], grid=[0.55, 0.45]) == (0.45, 1.0)
    with pytest.raises(ValueError):
        best_threshold([[0.9]], [-1])  # no error items: F1 undefined everywhere


def test_sweep_f1_agrees_with_predictions_at_every_threshold():
    rng = np.random.default_rng(2)
    means = [rng.choice([rng.random(), 0.5, 0.3, 0.07], size=rng.integers(0, 6)).astype(np.float32) for _ in range(80)]
    labels = [int(rng.integers(-1, len(m))) if len(m) else -1 for m in means]
    labels[0] = 0 if len(means[0]) else labels[0]
    f1 = f1_by_threshold(means, labels)
    for t, value in zip(THRESHOLD_GRID, f1):
        expected = processbench_scores(labels, predictions_at(means, t))["f1"]
        assert (np.isnan(value) and expected is None) or value == pytest.approx(expected)


# ------------------------------------------------------------------ the job


def pb_record(i, label, n_steps=3, **extra):
    return {"id": f"pb-{i}", "generator": "hand", "problem": f"Tom has {i} apples and buys 2 more. How many?",
            "steps": [f"Step {k}: {i} + 2 = {i + 2}." for k in range(n_steps)], "final_answer_correct": label == -1,
            "label": label, **extra}


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    assert main(["generate", "--n", "30", "--eval-set", "--output", str(root / "world-eval"), "--no-progress"]) == 0
    records = [pb_record(0, -1), pb_record(1, -1), pb_record(2, 1), pb_record(3, 0), pb_record(4, 2, n_steps=4),
               pb_record(5, None),                       # no label: skipped, counted
               pb_record(6, -1) | {"steps": []},         # invalid: counted
               pb_record(7, 2, n_steps=5) | {"steps": ["a long step " * 20] * 5},  # truncated with --max-length 200
               pb_record(8, 0, n_steps=2) | {"steps": ["7 " * 400, "done"]}]  # unscorable with --max-length 200
    (root / "pbtiny.json").write_text(json.dumps(records))
    return root


def recompute(out):
    """metrics.json's figures from predictions.parquet alone, with the component functions."""
    metrics = json.loads((out / "metrics.json").read_text())
    table = pq.read_table(out / "predictions.parquet")
    assert table.schema.remove_metadata() == arrow_schema("predictions")
    rows = table.to_pylist()
    for r in rows:
        assert r["prediction"] == predict_first_error(r["step_mean"], metrics["threshold"])
        assert len(r["step_mean"]) == len(r["step_std"]) == r["n_scored_steps"] <= r["n_steps"]
    all_s, all_y = [], []
    for name, m in metrics["subsets"].items():
        part = [r for r in rows if r["subset"] == name]
        pb = processbench_scores([r["label"] for r in part], [r["prediction"] for r in part])
        for key in ("n", "n_error", "n_correct"):
            assert m[key] == pb[key]
        for key in ("error_acc", "correct_acc", "f1"):
            assert m[key] == (None if pb[key] is None else pytest.approx(pb[key], abs=1e-6))
        s = [x for r in part for x in r["step_mean"][: len(step_labels(r["label"], r["n_steps"]))]]
        y = [x for r in part for x in step_labels(r["label"], r["n_steps"])[: r["n_scored_steps"]]]
        assert m["step_auroc"] == pytest.approx(auroc(s, y), abs=1e-6)
        assert m["step_ece"] == pytest.approx(expected_calibration_error(s, y), abs=1e-6)
        all_s += s
        all_y += y
    assert metrics["step_auroc"] == pytest.approx(auroc(all_s, all_y), abs=1e-6)
    f1s = [m["f1"] for m in metrics["subsets"].values() if m["f1"] is not None]
    assert metrics["mean_f1"] == pytest.approx(float(np.mean(f1s)), abs=1e-6)
    again = compute_metrics(rows, list(metrics["subsets"]))
    assert again["mean_f1"] == metrics["mean_f1"] and again["step_ece"] == metrics["step_ece"]
    return metrics, rows


def test_evaluate_end_to_end_with_the_shipped_prm(eval_inputs, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(eval_inputs / "world-eval"), str(eval_inputs / "pbtiny.json"),
               "--output", str(out), "--no-progress", "--threads", "1"])
    assert rc == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].split() == ["subset", "n", "error_acc", "correct_acc", "F1"]
    assert [line.split()[0] for line in printed[1:4]] == ["world-eval", "pbtiny", "mean"]
    assert printed[-1].startswith("evaluate: mean F1 ") and "over 2 subsets (37 items) at threshold 0.50" in printed[-1]
    metrics, rows = recompute(out)
    assert {"mean_f1", "threshold", "threshold_from", "model", "subsets", "step_auroc", "step_ece", "counts",
            "seconds"} <= set(metrics)
    assert metrics["threshold"] == 0.5 and metrics["threshold_from"] is None
    assert metrics["model"] == "actprm/assets/prm"
    assert list(metrics["subsets"]) == ["world-eval", "pbtiny"]
    for m in metrics["subsets"].values():
        for key in ("error_acc", "correct_acc", "f1", "step_auroc", "step_ece"):
            assert 0.0 <= m[key] <= 1.0
    pb = metrics["subsets"]["pbtiny"]
    assert (pb["n"], pb["n_error"], pb["n_correct"]) == (7, 5, 2)
    assert (pb["rows_read"], pb["rows_invalid"], pb["rows_unlabelled"]) == (9, 1, 1)
    assert metrics["counts"]["rows_evaluated"] == len(rows) == 37
    assert metrics["counts"]["invalid_by_kind"] == {"empty steps": 1}
    # rerunning into the same output needs --overwrite
    assert main(["evaluate", "--data", str(eval_inputs / "pbtiny.json"), "--output", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_evaluate_sweep_and_truncation(eval_inputs, tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(["evaluate", "--data", str(eval_inputs / "world-eval"), str(eval_inputs / "pbtiny.json"),
               "--output", str(out), "--no-progress", "--threads", "1", "--sweep-subset", "world-eval",
               "--max-length", "200"])
    assert rc == 0
    assert "(swept on world-eval)" in capsys.readouterr().out
    metrics, rows = recompute(out)
    assert metrics["threshold_from"] == "world-eval" and metrics["sweep"]["subset"] == "world-eval"
    assert metrics["threshold"] in [round(t, 2) for t in THRESHOLD_GRID]
    world = [r for r in rows if r["subset"] == "world-eval"]
    expected, _ = best_threshold([r["step_mean"] for r in world], [r["label"] for r in world])
    assert metrics["threshold"] == expected
    long = next(r for r in rows if r["id"] == "pb-7")
    assert 0 < long["n_scored_steps"] < long["n_steps"] == 5
    assert metrics["subsets"]["pbtiny"]["rows_truncated"] >= 1 and metrics["counts"]["rows_truncated"] >= 1
    unscorable = next(r for r in rows if r["id"] == "pb-8")  # its first step alone is over 200 tokens
    assert (unscorable["n_scored_steps"], unscorable["prediction"], unscorable["step_mean"]) == (0, -1, [])
    assert metrics["subsets"]["pbtiny"]["rows_unscorable"] == 1


def test_evaluate_user_errors(eval_inputs, tmp_path, capsys):
    pb = str(eval_inputs / "pbtiny.json")
    cases = [
        (["--data", str(tmp_path / "missing.json")], "no such file"),
        (["--data", pb, "--sweep-subset", "gsm8k"], "--sweep-subset 'gsm8k': no such subset"),
        ([], "no data"),
        (["--data", str(tmp_path / "*.nothing")], "no file matches"),
    ]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "pbtiny.json").write_text((eval_inputs / "pbtiny.json").read_text())
    cases.append((["--data", pb, str(tmp_path / "a" / "pbtiny.json")], "both subset 'pbtiny'"))
    for flags, message in cases:
        assert main(["evaluate", *flags, "--output", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_mean_f1_is_the_mean_of_the_unrounded_subset_f1s():
    """Subset F1s that each round up: the mean of the rounded ones would be one in the last digit off
    ProcessBench's unrounded mean (0.116155 where the official script prints 0.116154)."""
    from actprm.metrics import compute_metrics, processbench_scores

    def rows(subset, hits_err, n_err, hits_ok, n_ok):
        none = {"step_mean": [], "step_std": [], "n_steps": 3, "n_scored_steps": 0}
        out = [{"subset": subset, "label": 1, "prediction": 1 if i < hits_err else -1, **none} for i in range(n_err)]
        return out + [{"subset": subset, "label": -1, "prediction": -1 if i < hits_ok else 0, **none}
                      for i in range(n_ok)]

    data = rows("a", 1, 35, 9, 39) + rows("b", 1, 12, 7, 32) + rows("c", 1, 29, 8, 36)
    exact = [processbench_scores([r["label"] for r in data if r["subset"] == s],
                                 [r["prediction"] for r in data if r["subset"] == s])["f1"] for s in "abc"]
    got = compute_metrics(data)
    assert got["mean_f1"] == round(sum(exact) / 3, 6) != round(sum(round(f, 6) for f in exact) / 3, 6)
    assert [got["subsets"][s]["f1"] for s in "abc"] == [round(f, 6) for f in exact]
