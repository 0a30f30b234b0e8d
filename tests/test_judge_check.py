"""`actprm judge-check`: a judge's labels on ProcessBench scored as evaluate scores a PRM, against the stand-in
judge server with a known share of wrong answers."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import PROCESSBENCH

from actprm.cli import main
from actprm.metrics import processbench_scores
from actprm.testing.judge_server import FakeJudge, JudgeServer

pytestmark = pytest.mark.skipif(not PROCESSBENCH.is_dir(), reason="ProcessBench data not present")
PER_SUBSET = 50


@pytest.fixture(scope="module")
def subsets(tmp_path_factory):
    """50 ProcessBench items of each subset (25 with an error) whose problem is unique there (the stand-in judge knows
    a problem's label by its text), as ProcessBench files; and the truth it knows."""
    root = tmp_path_factory.mktemp("pb")
    truth, paths = {}, []
    for name in ("gsm8k", "math", "olympiadbench", "omnimath"):
        items = json.loads((PROCESSBENCH / f"{name}.json").read_text())
        counts: dict[str, int] = {}
        for item in items:
            counts[item["problem"]] = counts.get(item["problem"], 0) + 1
        unique = [i for i in items if counts[i["problem"]] == 1 and i["problem"] not in truth]
        chosen = ([i for i in unique if i["label"] != -1][:PER_SUBSET // 2]  # half with an error, half without
                  + [i for i in unique if i["label"] == -1][:PER_SUBSET // 2])
        truth.update({i["problem"]: (i["label"], len(i["steps"])) for i in chosen})
        (root / f"{name}.json").write_text(json.dumps(chosen))
        paths.append(str(root / f"{name}.json"))
    return paths, truth


def run_check(server, paths, out, *extra):
    return main(["judge-check", "--backend", "openai", "--base-url", server.url, "--judge-model", "fake-judge",
                 "--data", *paths, "--output", str(out), "--concurrency", "16", "--price-in", "1",
                 "--price-out", "2", "--no-progress", *extra])


def test_a_perfect_judge_scores_f1_one_and_a_rerun_pays_nothing(subsets, tmp_path, capsys):
    paths, truth = subsets
    with JudgeServer(FakeJudge(truth)) as server:
        assert run_check(server, paths, tmp_path / "jc", "--limit", "20") == 0
        report = json.loads((tmp_path / "jc" / "judge_check.json").read_text())
        assert report["n"] == 80 and report["mean_f1"] == 1.0 and report["exact_match"] == 1.0
        assert report["label_weight"] == 1.0 and report["answers_paid"] == 80
        assert run_check(server, paths, tmp_path / "jc", "--limit", "20") == 0  # from the cache
        assert server.judge.total_paid == 80
    out = capsys.readouterr().out
    assert "gsm8k" in out and "label_weight 1.00" in out


def test_a_judge_wrong_30_percent_of_the_time_scores_about_0_7(subsets, tmp_path, capsys):
    paths, truth = subsets
    with JudgeServer(FakeJudge(truth, wrong_rate=0.3, seed=1)) as server:
        assert run_check(server, paths, tmp_path / "jc") == 0
    report = json.loads((tmp_path / "jc" / "judge_check.json").read_text())
    assert report["n"] == 4 * PER_SUBSET and report["failed"] == 0
    assert abs(report["exact_match"] - 0.7) < 0.1 and abs(report["mean_f1"] - 0.7) < 0.15
    assert report["label_weight"] == pytest.approx(report["exact_match"], abs=1e-3)
    # the figures are evaluate's metric over the labels written out
    ann = {r["id"]: r["first_error_step"] for r in pq.read_table(tmp_path / "jc" / "annotations.parquet").to_pylist()}
    for path in paths:
        items = json.loads(Path(path).read_text())
        name = path.rsplit("/", 1)[-1].split(".")[0]
        expected = processbench_scores([i["label"] for i in items], [ann[i["id"]] for i in items])
        assert report["subsets"][name]["f1"] == pytest.approx(expected["f1"])
    assert f"label_weight {report['label_weight']:.2f}" in capsys.readouterr().out


def test_judge_check_with_the_verifier_and_user_errors(subsets, tmp_path, capsys):
    paths, _ = subsets
    assert main(["judge-check", "--data", *paths, "--wrong-rate", "0", "--limit", "10", "--no-progress"]) == 0
    assert "mean F1 1.000" in capsys.readouterr().out
    assert main(["judge-check", "--no-progress"]) == 2
    assert main(["judge-check", "--data", str(tmp_path / "missing.json"), "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 2
