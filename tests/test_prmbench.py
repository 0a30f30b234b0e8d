"""PRMBench: its scorer's figures by hand, its rows read (with their errors), `evaluate` end to end."""

import json

import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.io.subsets import labelled_batches, resolve_subsets
from actprm.metrics import benchmark_metrics
from actprm.prmbench import (
    CLASSES,
    UNDEFINED,
    prmbench_metrics,
    step_validity,
    tally,
    valid_share,
)
from actprm.schemas import Limits, arrow_schema

# ------------------------------------------------------------------ the scorer by hand


def test_one_sample_by_hand():
    def counts(t):
        return tuple(t.confusion[k] for k in ("tp", "fp", "tn", "fn"))

    t = tally([2], [True, False, True])  # error steps are 1-based: step index 1 is the error
    assert counts(t) == (2, 0, 1, 0)
    assert (t.steps, t.first_error, t.n) == ({"correct": [1, 1], "wrong": [1]}, [1], 1)
    assert valid_share([True, False, True]) == pytest.approx(2 / 3) and valid_share([]) == UNDEFINED
    t = tally([1, 3], [True, True])  # a label list shorter than the error steps: step 3 is never counted
    assert counts(t) == (1, 1, 0, 0) and t.first_error == [0]
    t = tally([4], [False, False])  # the first error was not labelled: no first-error figure
    assert counts(t) == (0, 0, 0, 2) and t.first_error == []


def test_metrics_by_hand():
    rows = [
        {"id": "redundency_a", "classification": "redundency", "error_steps": [2], "step_valid": [True, False, True]},
        {"id": "circular_a", "classification": "circular", "error_steps": [1, 3], "step_valid": [True, True, False]},
        {"id": "correct_a", "classification": "correct", "error_steps": [], "step_valid": [True, False]},
        {"id": "circular_a", "classification": "circular", "error_steps": [1], "step_valid": [False]},  # repeat: dropped
    ]
    m = prmbench_metrics(rows)
    # overall leaves `correct` out: TP 3 (2 + 1), FP 1, TN 2, FN 0
    assert (m["tp"], m["fp"], m["tn"], m["fn"], m["n"]) == (3, 1, 2, 0, 2)
    assert m["f1"] == pytest.approx(6 / 7)               # precision 3/4, recall 1
    assert m["negative_f1"] == pytest.approx(4 / 5)      # precision 2/2, recall 2/3
    assert m["prmscore"] == pytest.approx(29 / 35)
    assert m["first_error_acc"] == 0.5                   # redundency caught it, circular did not
    assert m["correct_step_acc"] == 1.0 and m["wrong_step_acc"] == pytest.approx(2 / 3)
    assert m["total_step_acc"] == pytest.approx(5 / 6)
    assert m["similarity"] == pytest.approx(1 / 6)       # |2/3 - 1/2| for both
    assert list(m["classes"]) == ["redundency", "circular", "correct"]  # present classes, the paper's order
    c = m["classes"]["correct"]
    assert (c["f1"], c["negative_precision"], c["negative_recall"]) == (pytest.approx(2 / 3), 0.0, UNDEFINED)
    assert c["negative_f1"] == 0.0 and c["prmscore"] == pytest.approx(1 / 3)  # the official formula with a -1 part
    assert m["classes"]["circular"]["prmscore"] == pytest.approx(0.5 * (2 / 3) + 0.5 * (2 / 3))
    assert m["groups"]["simplicity"] == pytest.approx((m["classes"]["redundency"]["prmscore"]
                                                       + m["classes"]["circular"]["prmscore"]) / 2)
    assert m["groups"]["soundness"] == UNDEFINED        # no class of the group present


def test_similarity_follows_the_official_truthiness():
    base = {"id": "circular_a", "classification": "circular", "error_steps": [1], "step_valid": [True, True]}
    none_valid = {"id": "correct_a", "classification": "correct", "error_steps": [], "step_valid": [False]}
    assert prmbench_metrics([base, none_valid])["similarity"] == UNDEFINED  # a correct share of 0 is skipped
    no_labels = none_valid | {"step_valid": []}
    assert prmbench_metrics([base, no_labels])["similarity"] == 2.0      # |1 - (-1)|: -1 is not skipped
    assert prmbench_metrics([base])["similarity"] == UNDEFINED           # no correct sample for the item


def test_edge_cases_no_error_predicted_and_all_errors():
    rows = [{"id": f"deception_{i}", "classification": "deception", "error_steps": [2], "step_valid": [True] * 3}
            for i in range(3)]
    m = prmbench_metrics(rows)
    assert (m["tn"], m["negative_precision"], m["negative_recall"], m["negative_f1"]) == (0, UNDEFINED, 0.0, 0.0)
    rows = [r | {"step_valid": [False] * 3} for r in rows]
    m = prmbench_metrics(rows)
    assert (m["tp"], m["precision"], m["recall"], m["f1"]) == (0, UNDEFINED, 0.0, 0.0)
    assert m["negative_recall"] == 1.0 and m["first_error_acc"] == 1.0


def test_validity_is_strictly_above_the_threshold():
    assert step_validity([0.5, 0.50001, 0.2], 0.5) == [False, True, False]


# ------------------------------------------------------------------ reading PRMBench's rows


def prm_row(idx, cls="circular", n=3, error_steps=(2,), **extra):
    return {"idx": idx, "classification": cls, "original_question": f"Q {idx}?", "modified_question": f"Q {idx}?",
            "original_process": [f"orig {k}" for k in range(n)], "modified_process": [f"step {k}" for k in range(n)],
            "error_steps": list(error_steps), "modified_steps": list(error_steps), "reason": "r", **extra}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_samples_and_errors(tmp_path):
    bad_missing = prm_row("p5")
    del bad_missing["error_steps"]
    f = write_jsonl(tmp_path / "prm_a.jsonl", [
        prm_row("p1"),                                        # scored
        prm_row("p2", "redundency"),                          # scored, and its original as `correct`
        prm_row("p3", error_steps=(0,)),                      # 0 in 1-based indices: refused
        prm_row("p4", error_steps=(4, 5)),                    # every error step past the end: refused
        bad_missing,                                          # refused
        prm_row("p6", "hallucination"),                       # unknown class: refused
        prm_row("p7", error_steps=(2, 9)),                    # one index past the end: scored, as the official scorer
        prm_row("p8", error_steps=("2",)),                    # refused
        prm_row("p9") | {"modified_process": ["a", "", "c"]},  # an empty step: scored (the data has them)
    ])
    g = write_jsonl(tmp_path / "prm_b.jsonl", [prm_row("p1"), prm_row("p10", "deception")])
    subsets = resolve_subsets([str(f), str(g)])
    assert [s.benchmark for s in subsets] == ["prmbench", "prmbench"]
    seen, rows, errors = set(), [], []
    for s in subsets:
        for b in labelled_batches(s, limits=Limits(), step_separator="\n\n", seen=seen):
            rows += b.rows
            errors += b.errors
    assert [r["id"] for r in rows] == ["circular_p1", "redundency_p2", "correct_p2", "circular_p7", "circular_p9",
                                       "deception_p10"]
    correct = rows[2]
    assert (correct["classification"], correct["error_steps"], correct["first_error_step"]) == ("correct", [], -1)
    assert correct["steps"] == ["orig 0", "orig 1", "orig 2"] and correct["problem"] == "Q p2?"
    assert rows[3]["error_steps"] == [2, 9] and rows[3]["first_error_step"] == 1
    reasons = {json.loads(e["row_json"])["idx"]: e["reason"] for e in errors}
    assert set(reasons) == {"p3", "p4", "p5", "p6", "p8", "p1"}
    assert "1-based" in reasons["p3"] and "all past the last" in reasons["p4"]
    assert reasons["p5"].startswith("missing label") and "unknown PRMBench class 'hallucination'" in reasons["p6"]
    assert reasons["p8"].startswith("wrong type") and reasons["p1"].startswith("duplicate id")
    assert json.loads(next(e["row_json"] for e in errors if "duplicate" in e["reason"]))["modified_process"]


# ------------------------------------------------------------------ evaluate end to end


@pytest.fixture(scope="module")
def prm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prmbench")
    for cls in CLASSES[:3]:
        write_jsonl(root / f"prm_{cls}.jsonl", [prm_row(f"q{i}", cls, n=3 + i % 3, error_steps=(1 + i % 3,))
                                                 for i in range(4)] + [prm_row("bad", cls, error_steps=(0,))])
    pb = [{"id": f"pb-{i}", "problem": f"{i} + 2?", "steps": [f"{i} + 2 = {i + 2}.", "done"], "label": label}
          for i, label in enumerate([-1, 1, 0, -1])]
    (root / "pbtiny.json").write_text(json.dumps(pb))
    return root


def test_evaluate_reports_prmbench_as_its_scorer_computes_it(prm_files, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", "--data", str(prm_files / "prm_*.jsonl"), str(prm_files / "pbtiny.json"),
               "--output", str(out), "--no-progress", "--threads", "1", "--threshold", "0.4"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "PRMScore" in printed and "PRMBench PRMScore" in printed.splitlines()[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    table = pq.read_table(out / "predictions.parquet")
    assert table.schema.remove_metadata() == arrow_schema("predictions")
    rows = table.to_pylist()
    prm = [r for r in rows if r["benchmark"] == "prmbench"]
    assert len(prm) == 3 * 4 + 4  # four rows per class, and the redundency rows' originals
    for r in rows:
        assert r["step_valid"] == [m > 0.4 for m in r["step_mean"]]
    # every figure of metrics.json from predictions.parquet alone, exactly
    again = benchmark_metrics(rows, ["pbtiny"])
    assert metrics["prmbench"] == {**again["prmbench"], "threshold": 0.4, "files": metrics["prmbench"]["files"],
                                   "samples_with_error_steps_past_end": 0}
    assert metrics["mean_f1"] == again["mean_f1"] and list(metrics["subsets"]) == ["pbtiny"]
    assert metrics["prmbench"]["threshold"] == metrics["threshold"] == 0.4
    assert set(metrics["prmbench"]["classes"]) == {*CLASSES[:3], "correct"}
    errors = pq.read_table(out / "errors.parquet").to_pylist()
    assert len(errors) == 3 and all("1-based" in e["reason"] for e in errors)
    assert metrics["counts"]["rows_invalid"] == 3


def test_the_python_api_evaluates_prmbench_as_the_verb_does(prm_files, tmp_path):
    import actprm

    out = tmp_path / "eval"
    files = sorted(prm_files.glob("prm_*.jsonl"))
    assert main(["evaluate", "--data", *map(str, files), "--output", str(out), "--no-progress", "--threads", "1"]) == 0
    verb = json.loads((out / "metrics.json").read_text())["prmbench"]
    records = {f.stem: [json.loads(line) for line in f.read_text().splitlines()] for f in files}
    got = actprm.evaluate(actprm.load_prm(device="cpu", threads=1), records)  # the verb's error rows left out
    assert got.prmscore == verb["prmscore"] and got.metrics["prmbench"]["classes"] == verb["classes"]
    assert got.mean_f1 is None and "PRMScore" in got.table()


def test_evaluate_benchmark_flag(prm_files, tmp_path, capsys):
    prm = str(prm_files / f"prm_{CLASSES[0]}.jsonl")
    assert main(["evaluate", "--data", prm, "--benchmark", "processbench", "--output", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds PRMBench's rows" in err
    assert main(["evaluate", "--data", str(prm_files / "pbtiny.json"), "--benchmark", "prmbench",
                 "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing required column" in err


def test_judge_check_on_prmbench_reads_a_verdict_as_a_model_that_stops_at_the_first_error(tmp_path, capsys):
    from actprm.testing.judge_server import FakeJudge, JudgeServer
    from pipelines.judge_check import verdict_validity

    assert verdict_validity(2, 4) == [True, True, False] and verdict_validity(-1, 3) == [True] * 3
    rows = [prm_row(f"q{i}", cls, n=4, error_steps=(2 + i % 2, 4)) | {"modified_question": f"{cls} {i}?"}
            for i in range(4) for cls in ("redundency", "confidence")]
    f = write_jsonl(tmp_path / "prm.jsonl", rows)
    truth = {r["modified_question"]: (min(r["error_steps"]) - 1, 4) for r in rows}
    truth |= {r["original_question"]: (-1, 4) for r in rows if r["classification"] == "redundency"}
    with JudgeServer(FakeJudge(truth)) as server:
        rc = main(["judge-check", "--backend", "openai", "--base-url", server.url, "--judge-model", "fake-judge",
                   "--data", str(f), "--output", str(tmp_path / "jc"), "--no-progress"])
    assert rc == 0
    report = json.loads((tmp_path / "jc" / "judge_check.json").read_text())
    m = report["prmbench"]
    assert report["subsets"] == {} and report["n"] == 12 and m["failed"] == 0
    # a right verdict: every labelled step right; the step-4 errors after the first are never labelled
    assert (m["prmscore"], m["f1"], m["negative_f1"], m["first_error_acc"]) == (1.0, 1.0, 1.0, 1.0)
    assert (m["tn"], m["fp"], m["fn"]) == (8, 0, 0) and m["tp"] == sum(1 + i % 2 for i in range(4)) * 2
    assert m["classes"]["correct"]["tp"] == 4 * 4
    assert "PRMBench PRMScore 1.000" in capsys.readouterr().out


@pytest.mark.skipif(not (PRMBENCH := __import__("conftest").REPO.parent / "shared" / "data" / "prmbench").is_dir(),
                    reason="PRMBench data not present")
def test_the_released_data_reads_as_the_official_loader_builds_it():
    """2,848 rows: 357 `correct` samples from the redundency rows; 4 rows whose every error step is past the
    solution's end refused; 39 with some past the end scored; empty steps scored."""
    seen, rows, errors = set(), [], []
    for s in resolve_subsets([str(PRMBENCH / "*.jsonl")]):
        for b in labelled_batches(s, limits=Limits(), step_separator="\n\n", seen=seen):
            rows += b.rows
            errors += b.errors
    assert len(rows) == 3201 and len(errors) == 4
    assert all("all past the last" in e["reason"] for e in errors)
    assert sum(r["classification"] == "correct" for r in rows) == 357
    assert sum(max(r["error_steps"]) > len(r["steps"]) for r in rows if r["error_steps"]) == 39
    assert any(not step.strip() for r in rows for step in r["steps"])
