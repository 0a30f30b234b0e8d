"""The public Python API (actprm/__init__.py, actprm/api.py): docs/python-api.md runs, every name is typed and
documented, `import actprm` stays cheap, and the API gives what the verbs write for the same rows."""

import dataclasses
import inspect
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import actprm
from actprm.config import EvaluateConfig, ScoreConfig, TrainConfig
from actprm.testing.judge_server import FakeJudge, JudgeServer, truth_from_rows

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "python-api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """The walk-through sets torch's CPU threads (load_prm(threads=1)); later test modules get theirs back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prm():
    return actprm.load_prm(device="cpu", threads=1)


# --------------------------------------------------------------------------- the surface


def test_docs_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 10 and "PRIME-style rewards inside an RL loop" in DOC.read_text()
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "python_api_doc"}
    start = time.perf_counter()
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name}[block {i}]", "exec"), ns)
    seconds = time.perf_counter() - start
    # what the walk-through claims: a round on 150 labels makes a better PRM than the untrained one
    assert len(ns["to_label"]) == 150 and len(ns["labelled"]) == 150
    assert (tmp_path / "runs" / "round-1" / "heads.safetensors").is_file()
    assert ns["after"].metrics["step_auroc"] > ns["before"].metrics["step_auroc"]
    assert ns["after"].mean_f1 > ns["before"].mean_f1
    assert [a["first_error_step"] for a in ns["judged"]] == [r["first_error_step"] for r in ns["to_label"][:8]]
    assert ns["implicit"].kind == "implicit" and (tmp_path / "runs" / "implicit-1").is_dir()
    print(f"docs/python-api.md: {len(blocks)} blocks in {seconds:.1f}s")


def test_the_readmes_python_example_runs(tmp_path, monkeypatch):
    (block,) = python_blocks((REPO / "README.md").read_text())
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme"}
    exec(compile(block, "README.md", "exec"), ns)
    assert len(ns["scored"]) == 200 and len(ns["picked"]) == 50


def test_all_names_resolve_typed_and_documented():
    assert actprm.__all__[0] == "__version__"
    assert set(actprm.__all__[1:]) == set(actprm._EXPORTS)
    for name in actprm.__all__[1:]:
        obj = getattr(actprm, name)
        assert inspect.getdoc(obj), name
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, name
            for p in sig.parameters.values():
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                    assert p.annotation is not inspect.Parameter.empty, (name, p.name)
    for name, member in inspect.getmembers(actprm.PRM, callable):
        if not name.startswith("_"):
            assert inspect.getdoc(member), name
    assert "load_prm" in dir(actprm)
    with pytest.raises(AttributeError):
        actprm.no_such_name  # noqa: B018


def test_import_actprm_is_cheap():
    code = ("import sys, time; t = time.perf_counter(); import actprm; t = time.perf_counter() - t; "
            "print(t, 'torch' in sys.modules, 'actprm.api' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    seconds, torch_loaded, api_loaded = out.stdout.split()
    assert torch_loaded == "False" and api_loaded == "False"
    assert float(seconds) < 0.5


# --------------------------------------------------------------------------- rows


def test_to_trajectories_maps_formats_and_checks_rows():
    rows = actprm.to_trajectories([
        {"problem": "2 + 2?", "steps": ["2 + 2 = 4"], "label": -1},  # processbench
        {"question": "3 + 3?", "steps": ["3 + 3 = 7", "so 7"], "hard_labels": [0, 0]},  # activeprm
        {"id": "mine", "prompt": "1 + 1?", "completions": ["1 + 1 = 2"], "labels": [True]},  # trl
    ])
    assert [r["first_error_step"] for r in rows] == [-1, 0, -1]
    assert rows[0]["id"].startswith("h-") and rows[2]["id"] == "mine"
    assert rows[1]["problem"] == "3 + 3?"
    bad = [{"problem": "x", "steps": []}, {"problem": "y", "steps": ["ok"]}]
    with pytest.raises(ValueError, match="1 of 2 records.*record 0: empty steps"):
        actprm.to_trajectories(bad)
    assert [r["problem"] for r in actprm.to_trajectories(bad, strict=False)] == ["y"]
    with pytest.raises(ValueError, match="duplicate id"):
        actprm.to_trajectories([{"id": "a", "problem": "p", "steps": ["s"]}] * 2)


def test_generate_is_the_generate_verbs_rows(tmp_path):
    from actprm.config import GenerateConfig
    from pipelines.generate import run

    run(GenerateConfig(n=30, seed=4, eval_set=True, output=str(tmp_path / "g")), progress=False)
    assert actprm.read_trajectories(tmp_path / "g") == actprm.generate(30, seed=4, eval_set=True)
    assert actprm.generate(5, seed=4, start=10) == actprm.generate(15, seed=4)[10:]


# --------------------------------------------------------------------------- scoring and selection


def test_score_steps_shapes_and_heads(prm):
    rows = actprm.generate(6, seed=7)
    results = prm.score_steps([r["problem"] for r in rows], [r["steps"] for r in rows])
    assert prm.kind == "ensemble" and prm.n_heads == 8
    for row, res in zip(rows, results):
        assert res.error is None and res.n_scored_steps == len(row["steps"])
        assert res.probs.shape == (len(row["steps"]), 8) and res.probs.dtype == np.float32
        assert ((res.probs > 0) & (res.probs < 1)).all()
        np.testing.assert_allclose(res.mean, res.probs.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(res.std, res.probs.std(axis=1, ddof=1), rtol=1e-5)


def test_score_equals_what_the_score_verb_writes(prm, tmp_path):
    from pipelines.score import run

    rows = actprm.generate(40, seed=5)
    write_rows(tmp_path / "in" / "part.parquet", rows)
    for settings in ({}, {"delta_pred": 0.502, "delta_std": 2.0, "acquisition": "bald"}):
        cfg = ScoreConfig(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), device="cpu",
                          overwrite=True, **settings)
        run(cfg, progress=False)
        written = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "scored").to_pylist()}
        mine = actprm.score(prm, rows, **settings)
        assert [r["id"] for r in mine] == [r["id"] for r in rows]
        assert {r["id"]: r for r in mine} == written
    assert 0 < sum(r["uncertain"] for r in mine) < len(mine)  # the looser rule: some rows certain
    rule = actprm.RuleSettings(**settings)
    assert actprm.score(prm, rows, rule) == mine


def test_select_budget_equals_the_score_verbs_budget_selection(prm, tmp_path):
    from pipelines.score import run

    rows = actprm.generate(40, seed=6)
    write_rows(tmp_path / "in" / "part.parquet", rows)
    run(ScoreConfig(input=[str(tmp_path / "in")], output=str(tmp_path / "out"), device="cpu",
                    selection="budget", budget=7, acquisition="variance"), progress=False)
    written = {r["id"] for r in pq.read_table(tmp_path / "out" / "scored").to_pylist() if r["selected"]}
    scored = actprm.score(prm, rows, acquisition="variance")
    picked = actprm.select(scored, strategy="variance", budget=7)
    assert {r["id"] for r in picked} == written and len(written) == 7
    # the rule: the uncertain rows, as `selected` says; with a budget, the most uncertain by acquisition
    assert [r["id"] for r in actprm.select(scored)] == [r["id"] for r in scored if r["uncertain"]]
    top = actprm.select(scored, budget=3)
    assert len(top) == 3 and min(r["acquisition"] for r in top) >= sorted(
        r["acquisition"] for r in scored if r["uncertain"])[-3]
    assert len(actprm.select(scored, strategy="random", budget=5)) == 5
    assert len(actprm.select(scored, strategy="full")) == len(scored)
    with pytest.raises(ValueError, match="unknown strategy"):
        actprm.select(scored, strategy="nope")


def test_a_row_too_long_for_the_model_comes_back_with_its_error(prm):
    short = dataclasses.replace(prm, max_length=100)
    rows = actprm.generate(3, seed=8)
    rows[1] = rows[1] | {"problem": "word " * 200}
    scored = actprm.score(short, rows)
    assert "error" in scored[1] and "step_mean" not in scored[1] and scored[1]["id"] == rows[1]["id"]
    assert all("error" not in scored[i] for i in (0, 2))
    assert any(scored[i]["n_scored_steps"] < len(rows[i]["steps"]) for i in (0, 2))  # later steps cut
    for strategy in ("actprm", "entropy"):  # the scoring strategies pass over it; random and full read no scores
        assert rows[1]["id"] not in {r["id"] for r in actprm.select(scored, strategy=strategy, budget=3)}
    assert actprm.step_rewards(short, [rows[1]["problem"]], [rows[1]["steps"]]) == [None]


# --------------------------------------------------------------------------- labels


def test_annotate_with_the_verifier_the_local_judge_and_the_outcome_checker():
    rows = actprm.generate(12, seed=9, eval_set=True)
    truth = [r["first_error_step"] for r in rows]
    exact = actprm.annotate(rows, "verifier", wrong_rate=0.0)
    assert [a["id"] for a in exact] == [r["id"] for r in rows] and [a["first_error_step"] for a in exact] == truth
    noisy = actprm.annotate(rows, actprm.JudgeConfig(backend="verifier", wrong_rate=1.0))
    assert all(a["first_error_step"] != t for a, t in zip(noisy, truth))
    fake = FakeJudge(truth_from_rows(rows))
    with JudgeServer(fake) as server:
        judged = actprm.annotate(rows, "openai", base_url=server.url, judge_model="stand-in", api_key_env=None)
    assert [a["first_error_step"] for a in judged] == truth and fake.total_paid == len(rows)
    assert all(a["prompt_tokens"] > 0 and a["judge"] == "stand-in" for a in judged)
    outcome = actprm.annotate(rows, "outcome")
    assert [a["first_error_step"] == -1 for a in outcome] == [bool(r["final_answer_correct"]) for r in rows]
    assert [actprm.outcome_label(r) for r in rows] == [r["final_answer_correct"] for r in rows]


def test_annotate_inside_a_running_event_loop():
    import asyncio

    rows = actprm.generate(3, seed=10)

    async def main():
        return actprm.annotate(rows, "verifier", wrong_rate=0.0)

    assert [a["first_error_step"] for a in asyncio.run(main())] == [r["first_error_step"] for r in rows]


def test_join_labels_drops_failed_and_missing_and_never_reads_ground_truth():
    rows = actprm.generate(5, seed=11)
    anns = actprm.annotate(rows[:4], "verifier", wrong_rate=1.0)
    anns[0] = anns[0] | {"first_error_step": None, "error": "refusal: no"}
    labelled = actprm.join_labels(rows, anns + [anns[1] | {"first_error_step": -1}])  # a duplicate: the first wins
    assert [r["id"] for r in labelled] == [r["id"] for r in rows[1:4]]
    assert [r["label_first_error"] for r in labelled] == [a["first_error_step"] for a in anns[1:4]]
    assert all(r["label_first_error"] != t["first_error_step"] for r, t in zip(labelled, rows[1:4]))
    assert {r["label_source"] for r in labelled} == {"verifier"}


# --------------------------------------------------------------------------- training and evaluation


def test_train_writes_what_the_train_verb_writes(tmp_path):
    from safetensors.numpy import load_file

    from pipelines.train import run

    rows = actprm.generate(60, seed=12)
    labelled = actprm.join_labels(rows, actprm.annotate(rows, "verifier", wrong_rate=0.1))
    write_rows(tmp_path / "labelled.parquet", labelled)
    settings = {"epochs": 2, "holdout": 0.2, "device": "cpu", "threads": 1}
    verb = run(TrainConfig(labelled=[str(tmp_path / "labelled.parquet")], output=str(tmp_path / "verb"), **settings),
               progress=False)
    mine = actprm.train(labelled, output=tmp_path / "api", **settings)
    assert isinstance(mine, actprm.TrainResult) and mine.output == tmp_path / "api"
    assert mine.round.losses == verb.round.losses and mine.round_index == 1
    a, b = load_file(str(tmp_path / "api" / "heads.safetensors")), load_file(str(tmp_path / "verb" / "heads.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    state = json.loads((tmp_path / "api" / "trainer_state.json").read_text())
    assert state["examples"] == verb.round.examples
    # a second round continues from the first (a PRM object or its directory)
    again = actprm.train(labelled[:20], output=tmp_path / "api2", model=actprm.load_prm(tmp_path / "api"), **settings)
    assert again.round_index == 2
    with pytest.raises(actprm.UserError, match="exists"):
        actprm.train(labelled, output=tmp_path / "api", **settings)
    with pytest.raises(actprm.UserError, match="join_labels"):
        actprm.train(rows, output=tmp_path / "unlabelled", **settings)


def test_evaluate_equals_the_evaluate_verb(prm, tmp_path):
    from pipelines.evaluate import run

    data = {"alpha": actprm.generate(40, seed=13, eval_set=True),
            "beta": actprm.generate(30, seed=14, eval_set=True)}
    for name, rows in data.items():
        write_rows(tmp_path / "data" / f"{name}.parquet", rows)
    for sweep in (None, "alpha"):
        verb = run(EvaluateConfig(data=[str(tmp_path / "data" / f"{n}.parquet") for n in data], sweep_subset=sweep,
                                  output=str(tmp_path / "out"), device="cpu", overwrite=True), progress=False).metrics
        mine = actprm.evaluate(prm, data, sweep_subset=sweep)
        assert isinstance(mine, actprm.Evaluation)
        for key in ("mean_f1", "threshold", "threshold_from", "model", "step_auroc", "step_ece", "sweep",
                    "checkpoint_threshold"):
            assert mine.metrics[key] == verb[key], key
        for name in data:
            shared = set(mine.metrics["subsets"][name])
            assert {k: verb["subsets"][name][k] for k in shared} == mine.metrics["subsets"][name]
        predictions = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
        assert [p["prediction"] for p in predictions] == [p["prediction"] for p in mine.predictions]
    assert len(mine.predictions) == 70 and "alpha" in mine.table()
    one = actprm.evaluate(prm, data["alpha"])
    assert list(one.metrics["subsets"]) == ["eval"]
    assert one.metrics["subsets"]["eval"]["f1"] == actprm.evaluate(prm, {"x": data["alpha"]}).metrics["subsets"]["x"]["f1"]


def test_implicit_prm_rewards_and_an_outcome_round(tmp_path):
    implicit = actprm.load_prm(scorer="implicit", device="cpu", beta=0.5)
    assert implicit.kind == "implicit" and implicit.n_heads == 1
    rows = actprm.generate(24, seed=15)
    problems, steps = [r["problem"] for r in rows], [r["steps"] for r in rows]
    rewards = actprm.step_rewards(implicit, problems, steps)
    assert [len(r) for r in rewards] == [len(s) for s in steps]
    assert all(np.all(r == 0) for r in rewards)  # pi_theta is pi_ref before any update
    result = actprm.train(rows, model=implicit, output=tmp_path / "i1", lr=1e-3, epochs=2)
    assert (tmp_path / "i1" / "implicit_config.json").is_file()
    assert json.loads((tmp_path / "i1" / "implicit_config.json").read_text())["beta"] == 0.5
    updated = actprm.load_prm(result.output, device="cpu")
    assert updated.kind == "implicit"
    after = actprm.step_rewards(updated, problems, steps)
    assert any(np.abs(r).max() > 0 for r in after)
    scored = actprm.score(updated, rows)
    for r, s in zip(after, scored):
        np.testing.assert_array_equal(np.asarray(s["step_reward"], dtype=np.float32), r)
        assert s["step_std"] is None
        # step_mean is sigmoid(q_k), q_k the running sum of the rewards
        np.testing.assert_allclose(s["step_mean"], 1 / (1 + np.exp(-np.cumsum(r, dtype=np.float64))), rtol=1e-4)
