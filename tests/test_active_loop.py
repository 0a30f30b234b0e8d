"""The active-learning loop (pipelines/loop.py) and `actprm demo` on a local Ray: resume after a kill
without paying a label twice, budgets that stop exactly, stream mode training only on what it selected."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actprm import uncertainty
from actprm.cli import main
from actprm.config import JudgeConfig, LoopConfig, TrainConfig
from actprm.errors import UserError
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import init_model, load_prm
from actprm.schemas import table_from_rows
from actprm.world.arith import Generator

ray = pytest.importorskip("ray")

from actprm.calibration import rule_constants
from actprm.labels import labelled_rows_of
from actprm.selection import calibration_of, select_rows
from pipelines import loop as active_loop

REPO = Path(__file__).resolve().parents[1]
FAST_TRAIN = TrainConfig(backbone="frozen", head_lr=3e-3, batch_size=8, warmup_steps=1, device="cpu", threads=1)

torch.set_num_threads(1)


class CountingAnnotator(VerifierAnnotator):
    """The verifier, counting the rows it is asked to label."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked: list[str] = []

    async def annotate_async(self, rows, on_row=None):
        self.asked += [r["id"] for r in rows]
        return await super().annotate_async(rows, on_row)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random-init PRM, a 120-row pool and a 40-row eval set."""
    base = tmp_path_factory.mktemp("world")
    model, tokenizer = init_model("tiny", n_heads=4, seed=0)
    model.save_pretrained(base / "tiny", tokenizer=tokenizer)
    for name, n, split in (("pool", 120, "train"), ("eval", 40, "eval")):
        (base / name).mkdir()
        pq.write_table(table_from_rows(list(Generator(seed=5).rows(0, n, split)), "trajectories"),
                       base / name / "part-00000.parquet")
    return base


@pytest.fixture(scope="module")
def scorers(local_ray):
    pool = active_loop.ScoringPool(actors=1, device="cpu")
    yield pool
    pool.close()


def loop_cfg(world: Path, out: Path, **kw) -> LoopConfig:
    settings = {"pool": [str(world / "pool")], "eval": [str(world / "eval")], "output": str(out),
                "model": str(world / "tiny"), "round_labels": [20], "rounds": 3, "train": FAST_TRAIN, "device": "cpu",
                "threads": 1,
                # the paper's strict deltas: the tiny random-init PRM is confidently wrong, and these tests want a
                # rule that keeps finding rows to buy
                "delta_pred": uncertainty.PAPER_DELTA_PRED, "delta_std": uncertainty.PAPER_DELTA_STD} | kw
    return LoopConfig(**settings)


def lines(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def selected_ids(run: Path, r: int) -> list[str]:
    rows = pq.read_table(run / "labelled" / f"round-{r:03d}" / "selection.parquet").to_pylist()
    return sorted(x["id"] for x in rows if x["selected"])


def test_actprm_selection_takes_the_most_uncertain_and_never_a_certain_row():
    ids = ["a", "b", "c", "d", "e"]
    scores = {"a": {"uncertain": True, "acquisition": 0.1}, "b": {"uncertain": False, "acquisition": 0.9},
              "c": {"uncertain": True, "acquisition": 0.5}, "d": {"uncertain": True, "acquisition": 0.3},
              "e": {"error": "too long: x"}}
    rows = [{"id": i} for i in ids]
    chosen = lambda strategy, budget: sorted(
        r["id"] for r in select_rows(strategy, rows, scores, budget, 0, 1) if r["selected"])
    assert chosen("actprm", 2) == ["c", "d"]          # the top uncertain by acquisition, not b (certain)
    assert chosen("actprm", None) == ["a", "c", "d"]  # stream: every uncertain row
    assert chosen("entropy", 2) == ["b", "c"]         # plain top-k by score; the unscorable e never
    assert chosen("full", None) == ids
    random_pick = chosen("random", 2)
    assert len(random_pick) == 2 and random_pick == chosen("random", 2)  # seeded: the same every time


def test_a_crash_between_annotate_and_train_resumes_without_reannotating(world, tmp_path, scorers, monkeypatch):
    run = tmp_path / "run"
    original = active_loop.Loop.train

    def crash_in_round_2(self, r):
        if r == 2:
            raise RuntimeError("killed between annotate and train")
        return original(self, r)

    monkeypatch.setattr(active_loop.Loop, "train", crash_in_round_2)
    first = CountingAnnotator()
    with pytest.raises(RuntimeError, match="killed"):
        active_loop.run(loop_cfg(world, run), progress=False, annotator=first, pool=scorers)
    assert len(first.asked) == 40  # rounds 1 and 2 annotated
    annotations = run / "labelled" / "round-002" / "annotations.parquet"
    stamp = annotations.stat().st_mtime_ns
    state = json.loads((run / "state.json").read_text())
    assert (state["round"], state["step"]) == (1, "annotate")
    assert not (run / "checkpoints" / "round-002").exists()

    monkeypatch.setattr(active_loop.Loop, "train", original)
    second = CountingAnnotator()
    result = active_loop.run(loop_cfg(world, run), progress=False, annotator=second, pool=scorers)
    assert sorted(second.asked) == selected_ids(run, 3)  # only round 3 went to the annotator
    assert annotations.stat().st_mtime_ns == stamp
    assert result.rounds == 3 and result.stopped == "3 rounds done"
    got = lines(run)
    assert [x["round"] for x in got] == [0, 1, 2, 3]
    assert [x["labels_used"] for x in got] == [0, 20, 40, 60]
    assert [x["trained_on"] for x in got] == [0, 20, 40, 60]  # train_on: all
    assert all(x["mean_f1"] is not None for x in got)
    for r in (1, 2, 3):
        ann = pq.read_table(run / "labelled" / f"round-{r:03d}" / "annotations.parquet").column("id").to_pylist()
        assert sorted(ann) == selected_ids(run, r)
    every = [i for r in (1, 2, 3) for i in selected_ids(run, r)]
    assert len(every) == len(set(every)) == 60  # no row bought twice
    state = json.loads((run / "state.json").read_text())
    assert (state["round"], state["step"], state["stopped"]) == (3, "done", "3 rounds done")
    model, _ = load_prm(run / "checkpoints" / "round-003")
    assert model.n_heads == 4

    # a rerun has nothing left to do; a rerun with one more round continues
    third = CountingAnnotator()
    active_loop.run(loop_cfg(world, run), progress=False, annotator=third, pool=scorers)
    assert third.asked == [] and len(lines(run)) == 4
    active_loop.run(loop_cfg(world, run, rounds=4), progress=False, annotator=third, pool=scorers)
    assert sorted(third.asked) == selected_ids(run, 4) and len(lines(run)) == 5


def test_label_budget_stops_exactly(world, tmp_path, scorers):
    run = tmp_path / "run"
    annotator = CountingAnnotator()
    result = active_loop.run(loop_cfg(world, run, strategy="random", round_labels=[30], rounds=None,
                                      label_budget=50, eval_every=5), progress=False, annotator=annotator,
                             pool=scorers)
    assert len(annotator.asked) == len(set(annotator.asked)) == 50
    assert result.stopped == "label budget of 50 reached"
    got = lines(run)
    assert [x["rows_selected"] for x in got] == [0, 30, 20]
    assert got[-1]["labels_used"] == 50 and got[-1]["judge_calls"] == 50
    assert got[1]["mean_f1"] is None and got[2]["mean_f1"] is not None  # eval_every 5; the last round always
    assert got[1]["rows_scored"] == 0  # random selection scores nothing


class PricedAnnotator(CountingAnnotator):
    """The verifier at one dollar a label, as a paid judge would bill."""

    async def annotate_async(self, rows, on_row=None):
        return [a | {"cost_usd": 1.0, "prompt_tokens": 100, "completion_tokens": 50}
                for a in await super().annotate_async(rows, on_row)]


def test_dollar_budget_stops_before_the_next_round(world, tmp_path, scorers):
    run = tmp_path / "run"
    result = active_loop.run(loop_cfg(world, run, strategy="random", rounds=None, dollar_budget=25.0, eval_every=9),
                             progress=False, annotator=PricedAnnotator(), pool=scorers)
    assert result.stopped == "dollar budget of $25 reached"
    last = lines(run)[-1]
    assert (last["round"], last["judge_usd"], last["judge_tokens"]) == (2, 40.0, 6000)


def test_dollar_budget_holds_for_every_request_of_a_paid_judge(world, tmp_path, scorers, served):
    """With a judge that bills, the loop's dollar budget is a SpendBudget checked before each request:
    the round that reaches it stops paying mid-round (its other rows fail `budget exhausted`) and the loop
    stops after it, never over budget."""
    _, fake, server, _ = served(n=2)  # the stand-in judge checks unknown (world) problems step by step
    judge = JudgeConfig(backend="openai", base_url=server.url, judge_model="fake-judge", max_tokens=64,
                        timeout_s=5.0, max_backoff_s=0.05, concurrency=4, price_in=1000.0, price_out=2000.0)
    run = tmp_path / "run"
    result = active_loop.run(loop_cfg(world, run, strategy="random", rounds=None, dollar_budget=2.0, eval_every=9,
                                      judge=judge), progress=False, pool=scorers)
    assert result.stopped == "dollar budget of $2 reached"
    annotations = pq.read_table(run / "labelled" / "round-001" / "annotations.parquet").to_pylist()
    paid = [a for a in annotations if a["error"] is None]
    refused = [a for a in annotations if a["error"] is not None and a["error"].startswith("budget exhausted")]
    assert paid and refused and len(paid) + len(refused) == 20
    assert sum(a["cost_usd"] for a in annotations) <= 2.0 and fake.total_paid == len(paid)
    assert lines(run)[-1]["round"] == 1


def test_stream_mode_trains_only_on_the_rows_it_selected(world, tmp_path, scorers):
    run = tmp_path / "run"
    result = active_loop.run(loop_cfg(world, run, mode="stream", chunk_rows=40, rounds=None, label_budget=50),
                             progress=False, annotator=CountingAnnotator(), pool=scorers)
    got = lines(run)
    assert [x["rows_considered"] for x in got] == [0, 40, 40]
    assert [x["rows_selected"] for x in got] == [0, 40, 10]
    assert result.stopped == "label budget of 50 reached"
    chunk2 = selected_ids(run, 2)
    pool_ids = [r["id"] for r in pq.read_table(world / "pool").to_pylist()]
    assert set(chunk2) <= set(pool_ids[40:80])  # the second chunk, in corpus order
    labelled = pq.read_table(run / "labelled" / "round-002" / "labelled.parquet").column("id").to_pylist()
    assert sorted(labelled) == chunk2
    trainer = json.loads((run / "checkpoints" / "round-002" / "trainer_state.json").read_text())
    assert trainer["examples"] + trainer["held_out"] == 10 and trainer["counts"]["labelled"] == 10  # its own only
    # of the chunk's 10, 9 are the most uncertain by entropy among its 40 and 1 (explore: 10%) is drawn at random
    sel = pq.read_table(run / "labelled" / "round-002" / "selection.parquet").to_pylist()
    top = sorted(sel, key=lambda r: (-r["acquisition"], r["id"]))[:9]
    assert all(r["selected"] for r in top)


class FailingAnnotator(CountingAnnotator):
    """The verifier, failing on its `fail_at`-th call (a loop killed in the middle of a chunk)."""

    def __init__(self, fail_at: int, **kw):
        super().__init__(**kw)
        self.calls, self.fail_at = 0, fail_at

    async def annotate_async(self, rows, on_row=None):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("killed in the middle of a chunk")
        return await super().annotate_async(rows, on_row)


def test_one_pass_scores_selects_and_trains_batch_by_batch_and_resumes_exactly(world, tmp_path, scorers):
    """The stream mode's one pass: mini-batches of 16 inside chunks of 40, every batch scored by the heads the
    earlier batches trained; a loop killed in the middle of chunk 2 and rerun ends where an uninterrupted one
    does, and a finished run continued with more chunks goes on with the pass's own state."""
    cfg = loop_cfg(world, tmp_path / "whole", mode="stream", chunk_rows=40, stream_batch=16, rounds=None,
                   explore=0.0, replay=30, replay_rows=8, steps_per_batch=2, calibrate_every=1)
    whole = active_loop.run(cfg, progress=False, annotator=CountingAnnotator(), pool=scorers)
    assert whole.stopped == "end of the corpus" and whole.rounds == 3
    got = lines(tmp_path / "whole")
    assert [x["rows_considered"] for x in got] == [0, 40, 40, 40]
    sel = pq.read_table(tmp_path / "whole" / "labelled" / "round-002" / "selection.parquet").to_pylist()
    assert [r["batch"] for r in sel] == [4] * 16 + [5] * 16 + [6] * 8  # the pass's batches, counted across chunks
    assert all(r["selected"] == r["uncertain"] for r in sel)  # no exploration: the rule's rows, batch by batch
    ckpt = tmp_path / "whole" / "checkpoints" / "round-002"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert [b["batch"] for b in state["one_pass"]["batches"]] == [4, 5, 6]
    assert sum(b["labelled"] for b in state["one_pass"]["batches"]) == got[2]["rows_selected"] == state["examples"]
    assert state["steps"] == 3 * 2 and (ckpt / "pass_state.safetensors").is_file()
    labelled = pq.read_table(ckpt.parents[1] / "labelled" / "round-002" / "labelled.parquet").column("id").to_pylist()
    assert sorted(labelled) == selected_ids(tmp_path / "whole", 2)

    # killed during chunk 2 (its second batch's labels), then rerun: the same rows, the same heads
    run = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed"):
        active_loop.run(cfg.model_copy(update={"output": str(run)}), progress=False,
                        annotator=FailingAnnotator(fail_at=5), pool=scorers)
    assert not (run / "checkpoints" / "round-002").exists() and not (run / "labelled" / "round-002").exists()
    active_loop.run(cfg.model_copy(update={"output": str(run)}), progress=False, annotator=CountingAnnotator(),
                    pool=scorers)
    for r in (1, 2, 3):
        assert selected_ids(run, r) == selected_ids(tmp_path / "whole", r)
    a = load_prm(str(tmp_path / "whole" / "checkpoints" / "round-003"))[0].heads.state_dict()
    b = load_prm(str(run / "checkpoints" / "round-003"))[0].heads.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_target_rate_calibrates_the_rule_on_the_first_chunk_and_holds_it(world, tmp_path, scorers):
    run = tmp_path / "run"
    cfg = loop_cfg(world, run, mode="stream", chunk_rows=40, rounds=2, target_rate=0.25, explore=0.0)
    active_loop.run(cfg, progress=False, annotator=CountingAnnotator(), pool=scorers)
    calibration = json.loads((run / "state.json").read_text())["calibration"]
    assert calibration["target_rate"] == 0.25 and calibration["n"] == 40
    deltas = calibration["delta_pred"], calibration["delta_std"]
    assert deltas != (cfg.delta_pred, cfg.delta_std)
    got = lines(run)
    assert abs(got[1]["rows_selected"] / 40 - 0.25) <= 0.05  # about the target on the chunk it was chosen on

    def check(r: int) -> None:  # every row of the chunk: selected iff uncertain under the held deltas, read
        # with the threshold and spread scale of the model that scored it
        model = run / "checkpoints" / f"round-{r - 1:03d}" if r > 1 else world / "tiny"
        threshold, spread = rule_constants(calibration_of(str(model)))
        for row in pq.read_table(run / "labelled" / f"round-{r:03d}" / "selection.parquet").to_pylist():
            assert row["selected"] == row["uncertain"] == uncertainty.is_uncertain(
                row["step_mean"], np.array(row["step_std"]) / spread, *deltas, threshold), (r, row["id"])

    check(1)
    check(2)
    # continued with another chunk: the deltas are not chosen again
    active_loop.run(cfg.model_copy(update={"rounds": 3}), progress=False, annotator=CountingAnnotator(), pool=scorers)
    assert json.loads((run / "state.json").read_text())["calibration"] == calibration
    check(3)
    with pytest.raises(UserError, match="target_rate"):
        active_loop.run(loop_cfg(world, tmp_path / "r2", strategy="random", target_rate=0.2), progress=False,
                        pool=scorers)


def test_loop_user_errors_are_one_line_exit_2(world, tmp_path, capsys):
    assert main(["loop", "--pool", str(tmp_path / "nope"), "--eval", str(world / "eval"),
                 "--output", str(tmp_path / "r")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: actprm\ntrain:\n  lr: -1\n")
    assert main(["loop", "--config", str(bad), "--pool", str(world / "pool"), "--eval", str(world / "eval"),
                 "--output", str(tmp_path / "r")]) == 2
    bad.write_text("strategy: clever\n")
    assert main(["loop", "--config", str(bad), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err and "train.lr" in err


def test_a_changed_setting_on_rerun_is_a_user_error(world, tmp_path, scorers, capsys):
    run = tmp_path / "run"
    active_loop.run(loop_cfg(world, run, strategy="random", rounds=1), progress=False, pool=scorers)
    assert main(["loop", "--config", str(run / "config.yaml"), "--strategy", "actprm", "--no-progress"]) == 2
    assert "other settings (strategy)" in capsys.readouterr().err


def test_a_killed_loop_process_resumes_without_paying_a_label_twice(world, tmp_path):
    """The real thing: `python -m pipelines.loop` killed after round 1's annotations are written and before
    its checkpoint; the rerun reads them back (the file is untouched) and finishes."""
    run = tmp_path / "run"
    cfg = loop_cfg(world, run, rounds=2, train=FAST_TRAIN.model_copy(update={"epochs": 40}), actors=1)
    config = tmp_path / "loop.yaml"
    config.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    cmd = [sys.executable, "-m", "pipelines.loop", "--config", str(config), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    annotations = run / "labelled" / "round-001" / "annotations.parquet"
    deadline = time.time() + 240
    while time.time() < deadline and not annotations.exists() and job.poll() is None:
        time.sleep(0.05)
    job.kill()
    job.wait()
    assert annotations.exists() and not (run / "checkpoints" / "round-001").exists()
    stamp = annotations.stat().st_mtime_ns
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loop: 2 rounds, 40 rows annotated" in done.stdout
    assert annotations.stat().st_mtime_ns == stamp
    assert sorted(pq.read_table(annotations).column("id").to_pylist()) == selected_ids(run, 1)
    assert [x["labels_used"] for x in lines(run)] == [0, 20, 40]


def test_demo_end_to_end_at_a_small_size(tmp_path, local_ray, capsys):
    out = tmp_path / "demo"
    prm = [{"idx": f"q{i}", "classification": "redundency", "original_question": f"{i} + 1?",
            "modified_question": f"{i} + 1?", "original_process": [f"{i} + 1 = {i + 1}."],
            "modified_process": [f"{i} + 1 = {i + 2}."], "error_steps": [1]} for i in range(3)]
    (tmp_path / "prm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prm))
    args = ["demo", "--output", str(out), "--rows", "80", "--eval-rows", "30", "--rounds", "2", "--round-labels",
            "15", "--chunk-rows", "40", "--actors", "1", "--threads", "1", "--no-progress",
            "--prmbench", str(tmp_path / "prm.jsonl")]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2] == f"demo: report in {out / 'report.md'}"
    assert printed[-1].startswith("demo: actprm F1 ") and "with 30 labels, random F1" in printed[-1]
    assert "(PRMScore " in printed[-1]
    assert "one pass: actprm F1 " in printed[-1] and "(full " in printed[-1]
    for name in ("report.md", "f1_vs_labels.png", "step_stats.png", "selection_rate.png", "one_pass.png",
                 "metrics.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    every = lines(out)
    assert {x["world"] for x in every} == {"arith-rare"}  # the demo's default world: rare mistakes
    got = [x for x in every if x["run"] == "rounds"]
    assert [(x["strategy"], x["round"]) for x in got] == [("actprm", 0), ("actprm", 1), ("actprm", 2),
                                                          ("random", 0), ("random", 1), ("random", 2)]
    passes = [x for x in every if x["run"] == "one pass"]
    assert [(x["strategy"], x["round"]) for x in passes] == [("actprm", 0), ("actprm", 1), ("actprm", 2),
                                                            ("full", 0), ("full", 1), ("full", 2)]
    assert passes[-1]["labels_used"] == 80 and 0 < passes[2]["labels_used"] <= 80
    # the passes read the pool's backbone outputs the rounds computed, not the actors again
    assert (out / "runs" / "pass-full" / "head_inputs" / "pool.safetensors").is_file()
    assert all(x["mean_f1"] is not None for x in got)
    report = (out / "report.md").read_text()
    assert "### arith-rare: actprm" in report and "### arith-rare: random" in report
    assert "### arith-rare: one pass, actprm" in report and "| one pass | labels (share of the pool)" in report
    assert "![F1 against labels](f1_vs_labels.png)" in report and "![one pass](one_pass.png)" in report
    assert "| PRMBench PRMScore at 0.5 |" in report and all(x["prmscore"] is not None for x in got)
    table = [ln for ln in report.splitlines() if ln.startswith("| actprm | ") or ln.startswith("| random | ")][:2]
    assert len(table) == 2 and table[1].endswith("| - (not scored) |")  # random needs no scores
    routed = table[0].rsplit("|", 2)[-2].strip().split(", ")
    want = [f"{x['uncertain_rate']:.0%}" for x in got if x["strategy"] == "actprm" and x["uncertain_rate"] is not None]
    assert routed == want and len(routed) == 2  # rounds 1 and 2, as metrics.jsonl has them
    assert (out / "runs" / "actprm" / "head_inputs" / "pool.safetensors").is_file()  # rounds on the cache
    model, _ = load_prm(out / "model")
    final = load_prm(out / "runs" / "actprm" / "checkpoints" / "round-002")[0]
    for a, b in zip(model.heads.parameters(), final.heads.parameters()):
        assert np.array_equal(a.detach().numpy(), b.detach().numpy())
    # a rerun resumes (nothing to redo) and a different size is refused
    assert main(args) == 0
    assert main(["demo", "--output", str(out), "--rows", "90", "--no-progress"]) == 2


def test_demo_with_a_contrast_world_reports_both(tmp_path, local_ray, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output", str(out), "--rows", "60", "--eval-rows", "20", "--rounds", "1",
                 "--round-labels", "15", "--no-one-pass", "--contrast-world", "configs/worlds/arith.yaml",
                 "--actors", "1", "--threads", "1", "--no-progress"]) == 0
    every = lines(out)
    assert {x["world"] for x in every} == {"arith-rare", "arith"} and not any(x["run"] == "one pass" for x in every)
    report = (out / "report.md").read_text()
    assert "## Contrast: the world `arith`" in report and "on `arith-rare` random" in report
    assert "![F1 against labels](contrast/f1_vs_labels.png)" in report
    assert (out / "contrast" / "f1_vs_labels.png").is_file() and (out / "contrast" / "world" / "pool").is_dir()


def test_round_labels_keep_the_per_step_labels_of_rollout_annotations():
    rows = {r["id"]: r for r in Generator(seed=9).rows(0, 3)}
    a, b, c = rows
    n = len(rows[a]["steps"])
    annotations = [
        {"id": a, "first_error_step": 1, "judge": "rollout(k=4)", "agreement": 1.0,
         "step_labels": [1.0, 0.0] + [0.0] * (n - 2), "step_progress": [0.25, -0.75] + [0.0] * (n - 2)},
        {"id": b, "first_error_step": -1, "judge": "verifier(wrong_rate=0)", "agreement": 1.0},
        {"id": c, "first_error_step": None, "judge": "verifier(wrong_rate=0)", "agreement": None},  # failed: no row
    ]
    out = {r["id"]: r for r in labelled_rows_of(annotations, rows)}
    assert set(out) == {a, b}
    assert out[a]["label_source"] == "rollout" and out[a]["step_labels"] == annotations[0]["step_labels"]
    assert out[a]["step_progress"] == annotations[0]["step_progress"]
    assert out[b]["label_source"] == "verifier" and out[b]["step_labels"] is None
    table = table_from_rows(list(out.values()), "labelled")  # the labelled schema takes both
    assert table.num_rows == 2


def test_rounds_on_cached_head_inputs_equal_the_uncached_rounds(world, tmp_path, local_ray):
    """With a frozen backbone the loop runs the backbone once (RUN/head_inputs/) and scores, trains and
    evaluates every round on the heads' inputs: the same selections, checkpoints and F1 as rescoring."""
    scorers = active_loop.ScoringPool(actors=1, device="cpu", dtype="float32")  # float32: exact comparisons
    try:
        runs = {}
        for cached in (False, True):
            runs[cached] = tmp_path / f"cached-{cached}"
            active_loop.run(loop_cfg(world, runs[cached], head_cache=cached, dtype="float32", rounds=2,
                                     train=FAST_TRAIN.model_copy(update={"dtype": "float32"})),
                            progress=False, annotator=CountingAnnotator(), pool=scorers)
    finally:
        scorers.close()
    assert (runs[True] / "head_inputs" / "pool.safetensors").is_file()
    assert not (runs[False] / "head_inputs").exists()
    for r in (1, 2):
        assert selected_ids(runs[True], r) == selected_ids(runs[False], r)
        a, b = (pq.read_table(runs[c] / "labelled" / f"round-{r:03d}" / "selection.parquet").to_pylist()
                for c in (True, False))
        np.testing.assert_allclose([x["acquisition"] for x in a], [x["acquisition"] for x in b], atol=1e-5)
        heads = [load_prm(runs[c] / "checkpoints" / f"round-{r:03d}")[0].heads.state_dict() for c in (True, False)]
        for name in heads[0]:
            torch.testing.assert_close(heads[0][name], heads[1][name], atol=1e-5, rtol=1e-4)
    for x, y in zip(lines(runs[True]), lines(runs[False])):
        assert x["trained_on"] == y["trained_on"] and x["train_steps"] == y["train_steps"]
        assert x["mean_f1"] == pytest.approx(y["mean_f1"], abs=1e-6)
    # the cache is read back on a rerun, and a loop that cannot use it says why
    stamp = (runs[True] / "head_inputs" / "pool.safetensors").stat().st_mtime_ns
    active_loop.run(loop_cfg(world, runs[True], head_cache=True, dtype="float32", rounds=2,
                             train=FAST_TRAIN.model_copy(update={"dtype": "float32"})),
                    progress=False, annotator=CountingAnnotator())
    assert (runs[True] / "head_inputs" / "pool.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match="train.backbone is full, not frozen"):
        active_loop.run(loop_cfg(world, tmp_path / "full", head_cache=True,
                                 train=FAST_TRAIN.model_copy(update={"backbone": "full"})),
                        progress=False, annotator=CountingAnnotator())


def test_the_loop_reports_prmbench_beside_processbench(world, tmp_path, scorers):
    """PRMBench files among the eval sets: each evaluated round carries its PRMScore (metrics.jsonl and
    evals/round-NNN.json, with the `correct` samples); ProcessBench's mean F1 stays over the other sets."""
    rows = [{"idx": f"q{i}", "classification": cls, "original_question": f"{i} + 2?", "modified_question": f"{i} + 2?",
             "original_process": [f"{i} + 2 = {i + 2}.", "done"], "modified_process": [f"{i} + 2 = {i + 3}.", "done"],
             "error_steps": [1]} for i in range(3) for cls in ("redundency", "deception")]
    (tmp_path / "prm.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    cfg = loop_cfg(world, run, strategy="random", rounds=1, eval=[str(world / "eval"), str(tmp_path / "prm.jsonl")])
    result = active_loop.run(cfg, progress=False, annotator=CountingAnnotator(), pool=scorers)
    got = lines(run)
    assert all(x["prmscore"] is not None for x in got) and "PRMScore" in result.summary_line()
    m = json.loads((run / "evals" / "round-001.json").read_text())
    assert list(m["subsets"]) == ["eval"] and m["prmbench"]["n"] == 6
    assert set(m["prmbench"]["classes"]) == {"redundency", "deception", "correct"}
    assert got[-1]["prmscore"] == m["prmbench"]["prmscore"]
    assert m["prmbench"]["classes"]["correct"]["n"] == 3
