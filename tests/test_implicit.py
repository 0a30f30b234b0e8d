"""The implicit PRM (actprm.implicit): q_k and r_k, the uniform reference, training on outcome labels."""

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from actprm.config import TrainConfig
from actprm.implicit import (
    dpo_pairs,
    implicit_ce_loss,
    load_implicit,
)
from actprm.labels import LabelCounts
from actprm.metrics import auroc, step_labels
from actprm.outcome import OutcomeAnnotator, final_answer, outcome_label
from actprm.scoring import TrajectoryEncoder, score_trajectories
from actprm.tokens import load_tokenizer
from actprm.trainer import train_and_save_implicit
from actprm.world.arith import Generator

torch.set_num_threads(1)

PROBLEMS = ["Ann has 3 apples. She buys 4 more. How many apples?", "What is 12 - 5?", "Tom has 9 cards."]
STEPS = [["3 + 4 = 7, so Ann has 7 apples.", "The answer is 7."], ["12 - 5 = 7.", "7 + 0 = 7", "so the answer is 7."],
         ["9 × 2 = 18, so the answer is 18."]]


def _lm(seed: int, zero_head: bool = False):
    """A tiny tied causal LM with the project tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = load_tokenizer()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512,
                      tie_word_embeddings=True, use_cache=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    lm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # every logit 0: the uniform distribution; else sharper than the near-uniform init
        lm.get_input_embeddings().weight.mul_(0.0 if zero_head else 30.0)
    return lm, tok


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    paths = {}
    for name, seed, zero in (("policy", 0, False), ("reference", 1, False), ("uniform", 2, True)):
        lm, tok = _lm(seed, zero)
        lm.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def _expected_q(policy_dir: str, reference_dir: str, beta: float):
    """q_k by hand: full causal-LM logits of each model (their own LM head), summed over each step's tokens."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer()
    lms = [AutoModelForCausalLM.from_pretrained(p, trust_remote_code=False).eval() for p in (policy_dir, reference_dir)]
    encoded = TrajectoryEncoder(tok).encode(PROBLEMS, STEPS)
    out = []
    for e in encoded:
        ids = torch.tensor([e.input_ids])
        with torch.no_grad():
            lp = [torch.log_softmax(m(ids).logits[0].double(), -1) for m in lms]
        q, total, start = [], 0.0, e.answer_start
        for sep in e.sep_positions:
            for t in range(start, sep):  # the step's tokens, the separator excluded
                total += beta * float(lp[0][t - 1, e.input_ids[t]] - lp[1][t - 1, e.input_ids[t]])
            q.append(total)
            start = sep + 1
        out.append(np.array(q))
    return out


def test_q_and_r_on_two_hand_built_models(two_models):
    beta = 0.3
    model, tok = load_implicit(two_models["policy"], beta=beta, reference=two_models["reference"])
    # a small token budget: several micro-batches with padding; results must not depend on it
    results = score_trajectories(model, tok, PROBLEMS, STEPS, batch_tokens=64)
    expected = _expected_q(two_models["policy"], two_models["reference"], beta)
    for res, q, steps in zip(results, expected, STEPS):
        assert res.n_scored_steps == len(steps)
        np.testing.assert_allclose(res.step_value, q, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(res.step_reward, np.diff(q, prepend=0.0), rtol=1e-4, atol=1e-4)
        # step_mean = sigmoid(q_k) by default; one "head" whose spread is 0
        np.testing.assert_allclose(res.mean, 1 / (1 + np.exp(-q)), rtol=1e-5, atol=1e-6)
        assert np.all(res.std == 0)
    assert any(abs(q[-1]) > 1e-2 for q in expected)  # the two models differ: not a vacuous check
    by_reward, _ = load_implicit(two_models["policy"], beta=beta, reference=two_models["reference"],
                                 step_prob="reward")
    for res, q in zip(score_trajectories(by_reward, tok, PROBLEMS, STEPS), expected):
        np.testing.assert_allclose(res.mean, 1 / (1 + np.exp(-np.diff(q, prepend=0.0))), rtol=1e-4, atol=1e-5)


def test_no_reference_equals_a_uniform_reference(two_models):
    none, tok = load_implicit(two_models["policy"], beta=0.2, reference="none")
    uniform, _ = load_implicit(two_models["policy"], beta=0.2, reference=two_models["uniform"])
    with_ref, _ = load_implicit(two_models["policy"], beta=0.2, reference=two_models["reference"])
    a = score_trajectories(none, tok, PROBLEMS, STEPS)
    b = score_trajectories(uniform, tok, PROBLEMS, STEPS)
    c = score_trajectories(with_ref, tok, PROBLEMS, STEPS)
    for x, y, z in zip(a, b, c):
        np.testing.assert_allclose(x.step_value, y.step_value, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(x.step_reward, y.step_reward, rtol=1e-5, atol=1e-4)
        assert not np.allclose(x.step_value, z.step_value, rtol=0.1)  # a real reference changes q
    # the untrained default (the shipped backbone against itself) gives q = 0: every step 0.5
    default, tok = load_implicit(None)
    for res in score_trajectories(default, tok, PROBLEMS, STEPS):
        assert np.all(res.step_value == 0) and np.all(res.mean == 0.5)


def test_outcome_checker_and_annotator():
    rows = list(Generator(seed=3).rows(0, 200, "eval"))
    assert all(outcome_label(r) == r["final_answer_correct"] for r in rows)
    assert {outcome_label(r) for r in rows} == {True, False}
    assert final_answer(["12 - 5 = 7, so the answer is 7."]) == "7"
    assert outcome_label({"steps": ["so the answer is 8."], "reference_answer": "7"}) is False
    assert outcome_label({"steps": ["x"], "final_answer_correct": None}) is None
    ann = OutcomeAnnotator().annotate(rows[:20] + [{"id": "no-ref", "steps": ["a"]}])
    assert [a["id"] for a in ann] == [r["id"] for r in rows[:20]] + ["no-ref"]
    for a, r in zip(ann, rows[:20]):
        assert (a["first_error_step"] == -1) == r["final_answer_correct"]
        assert a["judge"] == "outcome" and a["attempts"] == 0 and a["cost_usd"] == 0
    assert ann[-1]["first_error_step"] is None and ann[-1]["error"].startswith("no reference")


def test_dpo_pairs_and_ce_loss():
    pairs = dpo_pairs(["a", "a", "b", "c", "c"], [True, False, True, False, True], seed=0)
    assert (0, 1) in pairs and (4, 3) in pairs or (2, 3) in pairs
    assert all(w in (0, 2, 4) and v in (1, 3) for w, v in pairs)
    r = torch.tensor([2.0, -1.0])
    loss = implicit_ce_loss(r, torch.tensor([1.0, 0.0]), torch.ones(2))
    assert math.isclose(loss.item(), (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2, rel_tol=1e-5)


def _step_auroc(model_dir, rows):
    model, tok = load_implicit(model_dir)
    results = score_trajectories(model, tok, [r["problem"] for r in rows], [r["steps"] for r in rows])
    scores, labels = [], []
    for row, res in zip(rows, results):
        lab = step_labels(row["first_error_step"], len(row["steps"]))
        scores.append(res.mean[: lab.size])
        labels.append(lab)
    return auroc(np.concatenate(scores), np.concatenate(labels))


def test_training_on_outcome_labels_improves_step_auroc(tmp_path):
    train = list(Generator(seed=1).rows(0, 240, "train"))
    for r in train:  # outcome labels only: the step label must not be read
        r["first_error_step"] = None
    held_out = list(Generator(seed=2).rows(0, 150, "eval"))
    cfg = TrainConfig(objective="implicit-ce", output=str(tmp_path / "m"), lr=1e-4, beta=0.5, epochs=1,
                      batch_size=16, warmup_steps=2, seed=0)
    result = train_and_save_implicit(cfg, train, LabelCounts(labelled=len(train)), torch.device("cpu"))
    assert result.round.examples == 240 and result.round.steps == 15
    saved = json.loads((tmp_path / "m" / "implicit_config.json").read_text())
    assert saved["beta"] == 0.5 and saved["reference"] == "actprm/assets/backbone"
    before = _step_auroc(None, held_out)  # the untrained backbone: q = 0 everywhere
    after = _step_auroc(str(tmp_path / "m"), held_out)
    assert before == pytest.approx(0.5)
    assert after > 0.58, (before, after)


def test_score_job_writes_implicit_columns(tmp_path, two_models):
    from actprm.config import ScoreConfig
    from pipelines.score import run as run_score

    rows = list(Generator(seed=0).rows(0, 12, "eval"))
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = ScoreConfig(input=[str(data)], output=str(tmp_path / "out"), scorer="implicit",
                      model=two_models["policy"], reference=two_models["reference"], beta=0.5, threads=1,
                      device="cpu")
    result = run_score(cfg, progress=False)
    assert result.n_scored == 12
    table = pq.read_table(tmp_path / "out" / "scored").to_pylist()
    for r in table:
        assert r["step_std"] is None and len(r["step_value"]) == len(r["step_reward"]) == len(r["step_mean"])
        q = np.array(r["step_value"])
        np.testing.assert_allclose(r["step_reward"], np.diff(q, prepend=0.0), atol=1e-4)
        np.testing.assert_allclose(r["step_mean"], 1 / (1 + np.exp(-q)), atol=1e-5)
        first = np.flatnonzero(np.array(r["step_mean"]) < 0.5)
        assert r["pred_first_error"] == (int(first[0]) if first.size else -1)
        # the margin rule: certain iff every step up to E is at least delta_pred - 0.5 from 0.5
        end = r["pred_first_error"] if r["pred_first_error"] >= 0 else len(q) - 1
        margins = np.abs(np.array(r["step_mean"][: end + 1]) - 0.5)
        assert r["uncertain"] == bool(np.any(margins < cfg.delta_pred - 0.5))


def test_filter_with_the_implicit_scorer_on_ray_equals_in_process_score(tmp_path, two_models, local_ray, capsys):
    from actprm.cli import main

    rows = list(Generator(seed=4).rows(0, 60, "eval"))
    (tmp_path / "corpus").mkdir()
    for k in range(0, 60, 20):  # three files, read by separate tasks
        (tmp_path / "corpus" / f"part-{k // 20}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[k:k + 20]))
    # float32: compared to 1e-5 across different batchings, which bf16 (dtype auto on an AVX512-BF16 CPU) is not
    (tmp_path / "fp32.yaml").write_text("dtype: float32\n")
    flags = ["--scorer", "implicit", "--model", two_models["policy"], "--reference", two_models["reference"],
             "--beta", "0.5", "--device", "cpu", "--no-progress", "--config", str(tmp_path / "fp32.yaml")]
    assert main(["score", "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "s"), "--threads", "1",
                 *flags]) == 0
    assert main(["filter", "--input", str(tmp_path / "corpus"), "--output", str(tmp_path / "f"), "--actors", "2",
                 "--batch-rows", "16", *flags]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("filter: 60 rows read, 60 scored")
    expected = {r["id"]: r for r in pq.read_table(tmp_path / "s" / "scored").to_pylist()}
    got = pq.read_table(tmp_path / "f" / "scored").to_pylist()
    assert sorted(r["id"] for r in got) == sorted(expected)
    for r in got:
        e = expected[r["id"]]
        assert r["step_std"] is None and r["uncertain"] == e["uncertain"] and r["selected"] == e["uncertain"]
        for col in ("step_value", "step_reward", "step_mean"):  # float32 sums of up to ~100: relative too
            np.testing.assert_allclose(r[col], e[col], rtol=1e-5, atol=1e-5)
    assert {r["id"] for r in pq.read_table(tmp_path / "f" / "selected").to_pylist()} == {
        i for i, e in expected.items() if e["uncertain"]}


def test_prime_loop_mode_trains_online_from_outcome_labels(tmp_path, local_ray):
    """`labels: outcome` + `scorer: implicit` (configs/loop/prime.yaml): no judge call, labels equal the world's
    exact outcomes, each round's implicit PRM continues from the last, and is evaluated."""
    from actprm.config import LoopConfig, load_config
    from actprm.schemas import table_from_rows
    from pipelines import loop as active_loop

    for name, n, split, seed in (("pool", 48, "train", 5), ("eval", 16, "eval", 6)):
        (tmp_path / name).mkdir()
        pq.write_table(table_from_rows(list(Generator(seed=seed).rows(0, n, split)), "trajectories"),
                       tmp_path / name / "part-00000.parquet")
    cfg = load_config(LoopConfig, "configs/loop/prime.yaml", {
        "pool": [str(tmp_path / "pool")], "eval": [str(tmp_path / "eval")], "output": str(tmp_path / "run"),
        "round_labels": [12], "rounds": 2, "score_sample": 24, "actors": 1, "device": "cpu", "threads": 1})
    result = active_loop.run(cfg, progress=False)
    assert result.rounds == 2
    truth = {r["id"]: r["final_answer_correct"] for r in Generator(seed=5).rows(0, 48, "train")}
    for r in (1, 2):
        ann = pq.read_table(tmp_path / "run" / "labelled" / f"round-00{r}" / "annotations.parquet").to_pylist()
        assert len(ann) == 12 and all(a["judge"] == "outcome" for a in ann)
        assert all((a["first_error_step"] == -1) == truth[a["id"]] for a in ann)
        state = json.loads((tmp_path / "run" / "checkpoints" / f"round-00{r}" / "trainer_state.json").read_text())
        assert state["objective"] == "implicit-ce" and state["examples"] == 12  # train_on: new (online)
    assert state["started_from"].endswith("round-001") and state["round"] == 2
    lines = result.lines
    assert [ln["judge_calls"] for ln in lines] == [0, 0, 0] and lines[-1]["labels"] == 24
    assert all(ln["mean_f1"] is not None and ln["step_auroc"] is not None for ln in lines)
    assert lines[0]["step_auroc"] == pytest.approx(0.5)  # round 0: the backbone against itself, q = 0
    sel = pq.read_table(tmp_path / "run" / "labelled" / "round-001" / "selection.parquet").to_pylist()
    assert all(s["step_std"] is None for s in sel if s["step_mean"] is not None)


def test_loop_refuses_outcome_labels_for_the_ensemble(tmp_path):
    from actprm.config import LoopConfig
    from actprm.errors import UserError
    from pipelines import loop as active_loop

    cfg = LoopConfig(pool=["p"], eval=["e"], output=str(tmp_path / "r"), labels="outcome")
    with pytest.raises(UserError, match="implicit-ce"):
        active_loop.check_config(cfg)
    cfg = LoopConfig(pool=["p"], eval=["e"], output=str(tmp_path / "r"), scorer="implicit")
    with pytest.raises(UserError, match="scorer: ensemble"):
        active_loop.check_config(cfg)


def test_cli_train_from_outcomes_then_evaluate_with_the_implicit_scorer(tmp_path, capsys):
    from actprm.cli import main
    from actprm.schemas import table_from_rows

    (tmp_path / "pool").mkdir()
    rows = list(Generator(seed=7).rows(0, 16, "train"))
    for r in rows:
        r["first_error_step"] = None  # outcome labels only
    pq.write_table(table_from_rows(rows, "trajectories"), tmp_path / "pool" / "part-00000.parquet")
    pq.write_table(table_from_rows(list(Generator(seed=8).rows(0, 10, "eval")), "trajectories"),
                   tmp_path / "eval.parquet")
    assert main(["train", "--objective", "implicit-ce", "--trajectories", str(tmp_path / "pool"), "--output",
                 str(tmp_path / "m"), "--beta", "0.3", "--batch-size", "8", "--threads", "1", "--device", "cpu",
                 "--no-progress"]) == 0
    state = json.loads((tmp_path / "m" / "trainer_state.json").read_text())
    assert state["examples"] == 16 and state["steps"] == 2 and state["beta"] == 0.3
    assert main(["evaluate", "--scorer", "implicit", "--model", str(tmp_path / "m"), "--data",
                 str(tmp_path / "eval.parquet"), "--output", str(tmp_path / "ev"), "--threads", "1",
                 "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["subsets"]["eval"]["n"] == 10 and metrics["step_auroc"] is not None
    assert main(["train", "--objective", "implicit-dpo", "--workers", "2", "--trajectories",
                 str(tmp_path / "pool"), "--output", str(tmp_path / "m2")]) == 2
    assert "in-process" in capsys.readouterr().err


def test_dpo_objective_trains_on_right_wrong_pairs(tmp_path):
    rows = list(Generator(seed=9).rows(0, 24, "eval"))  # about half wrong
    n_right = sum(r["final_answer_correct"] for r in rows)
    cfg = TrainConfig(objective="implicit-dpo", output=str(tmp_path / "d"), lr=1e-4, beta=0.5, batch_size=8,
                      warmup_steps=0, reference="none")
    result = train_and_save_implicit(cfg, rows, LabelCounts(labelled=len(rows)), torch.device("cpu"))
    state = json.loads((tmp_path / "d" / "trainer_state.json").read_text())
    pairs = min(n_right, len(rows) - n_right)
    assert state["units"] == pairs and result.round.steps == math.ceil(pairs / 4)
    assert state["reference"] == "none" and np.isfinite(result.round.last_loss)
