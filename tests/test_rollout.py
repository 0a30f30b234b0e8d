"""The rollout annotator (actprm.judge.rollout): Math-Shepherd values, PAV progress, the earliest-error
rule, caching and accounting, over a hand-made prover whose completions are known, in-process and over
HTTP; and the in-process world backbone prover (actprm.judge.prover)."""

from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.config import AnnotateConfig, JudgeConfig
from actprm.judge.rollout import RolloutAnnotator

SEP = " | "
REF = "10"
# prefix length -> how many of the first k completions reach the reference answer
TRAJ = {"id": "a", "problem": "P1", "steps": ["s0", "s1", "s2", "s3, so the answer is 10."], "reference_answer": REF}
HITS = {"P1": {0: 2, 1: 3, 2: 1, 3: 0}, "P2": {0: 1, 1: 0, 2: 4, 3: 4}}
EARLY = {"id": "b", "problem": "P2", "steps": ["t0", "t1", "t2", "t3, so the answer is 10."], "reference_answer": REF}


def hand_prover(prompt: str, n: int, body: dict | None = None) -> list[str]:
    problem, _, prefix = prompt.partition("\n")
    hits = HITS[problem][prefix.count(SEP)]
    return [f"more steps, so the answer is {REF if j < hits else 11}." for j in range(n)]


class HandClient:
    """`completions.create` of the OpenAI client, answered by `hand_prover`; counts requests."""

    def __init__(self):
        self.completions = self
        self.requests = []

    async def create(self, *, prompt, n=1, **kw):
        self.requests.append((prompt, n))
        texts = hand_prover(prompt, n)
        return SimpleNamespace(choices=[SimpleNamespace(index=j, text=t, finish_reason="stop") for j, t in enumerate(texts)],
                               usage=SimpleNamespace(prompt_tokens=10, completion_tokens=5 * n))


def cfg(**kw):
    base = {"backend": "rollout", "rollouts": 4, "prover": "endpoint", "prover_model": "hand",
            "prover_prompt": "{problem}\n{prefix}", "prover_step_separator": SEP, "price_in": 1.0, "price_out": 2.0}
    return JudgeConfig(**{**base, **kw})


def test_values_progress_and_earliest_error_without_stopping():
    client = HandClient()
    row = RolloutAnnotator(cfg(stop_at_error=False), client=client).annotate([TRAJ])[0]
    # Q of prefixes of length 1, 2, 3 = hits/k; the last step: the trajectory's own answer (right: 1.0)
    assert row["step_values"] == [0.75, 0.25, 0.0, 1.0]
    # progress: Q_i - Q_{i-1}, with Q_{-1} = 2/4 (the problem alone)
    assert row["step_progress"] == pytest.approx([0.25, -0.5, -0.25, 1.0])
    assert row["first_error_step"] == 2 and row["error"] is None
    assert row["step_labels"] is None  # hard labels: train on first_error_step
    assert len(client.requests) == 4 and all(n == 4 for _, n in client.requests)  # root + 3 prefixes, n=k each
    # accounting: tokens and dollars of every request, billed to the row
    assert row["prompt_tokens"] == 40 and row["completion_tokens"] == 80
    assert row["cost_usd"] == pytest.approx((40 * 1.0 + 80 * 2.0) / 1e6)


def test_threshold_and_soft_labels():
    row = RolloutAnnotator(cfg(stop_at_error=False, rollout_threshold=0.3, rollout_labels="soft"),
                           client=HandClient()).annotate([TRAJ])[0]
    assert row["first_error_step"] == 1  # the first Q <= 0.3
    assert row["step_labels"] == row["step_values"] == [0.75, 0.25, 0.0, 1.0]


def test_stop_at_error_skips_the_prefixes_after_it():
    client = HandClient()
    a, b = RolloutAnnotator(cfg(), client=client).annotate([TRAJ, EARLY])
    assert a["step_values"] == [0.75, 0.25, 0.0, None] and a["first_error_step"] == 2
    assert b["step_values"] == [0.0, None, None, None] and b["first_error_step"] == 0
    assert b["step_progress"] == [-0.25, None, None, None]
    # b: the problem alone and its first step only (2 requests, not 4)
    assert sum(p.startswith("P2") for p, _ in client.requests) == 2


def test_wrong_final_answer_and_missing_reference():
    wrong = {**TRAJ, "id": "w", "steps": TRAJ["steps"][:3] + ["s3, so the answer is 12."]}
    no_ref = {**TRAJ, "id": "n", "reference_answer": None}
    w, n = RolloutAnnotator(cfg(stop_at_error=False), client=HandClient()).annotate([wrong, no_ref])
    assert w["step_values"][-1] == 0.0 and w["first_error_step"] == 2
    assert n["first_error_step"] is None and n["error"].startswith("no reference:")


def test_never_pays_twice_and_k4_is_part_of_k8(tmp_path):
    from actprm.judge.cache import AnswerCache

    cache = AnswerCache(tmp_path / "c.sqlite")
    first = HandClient()
    rows = RolloutAnnotator(cfg(rollouts=4, stop_at_error=False), cache, client=first).annotate([TRAJ])
    again = HandClient()
    rerun = RolloutAnnotator(cfg(rollouts=4, stop_at_error=False), cache, client=again).annotate([TRAJ])
    assert again.requests == [] and rerun[0]["step_values"] == rows[0]["step_values"]
    assert rerun[0]["cached"] == 16 and rerun[0]["cost_usd"] == pytest.approx(rows[0]["cost_usd"])
    fewer = HandClient()
    RolloutAnnotator(cfg(rollouts=2, stop_at_error=False), cache, client=fewer).annotate([TRAJ])
    assert fewer.requests == []  # the first 2 samples of each prefix are cached
    more = HandClient()
    RolloutAnnotator(cfg(rollouts=6, stop_at_error=False), cache, client=more).annotate([TRAJ])
    assert sorted(n for _, n in more.requests) == [2, 2, 2, 2]  # only samples 4 and 5 of each prefix


def test_over_http_with_retries_through_the_cli(tmp_path):
    from actprm.cli import main
    from actprm.testing.judge_server import FakeJudge, JudgeServer

    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([TRAJ, EARLY]), data)
    fake = FakeJudge(prover=hand_prover, faults=["429"], retry_after="0")
    with JudgeServer(fake) as server:
        code = main(["annotate", "--backend", "rollout", "--prover", "endpoint", "--prover-model", "hand",
                     "--base-url", server.url, "--rollouts", "4", "--input", str(data), "--output", str(tmp_path / "out"),
                     "--config", str(_yaml(tmp_path)), "--no-progress"])
    assert code == 0
    table = pq.read_table(tmp_path / "out" / "annotations")
    got = {r["id"]: r for r in table.to_pylist()}
    assert got["a"]["step_values"] == [0.75, 0.25, 0.0, None] and got["a"]["first_error_step"] == 2
    assert got["b"]["first_error_step"] == 0
    assert fake.faults_served["429"] == 1 and sum(r["attempts"] for r in got.values()) == 7  # 6 requests + 1 retry
    assert table.schema.field("step_progress").type == pa.list_(pa.float32())


def _yaml(tmp_path):
    path = tmp_path / "rollout.yaml"
    path.write_text(f"prover_prompt: \"{{problem}}\\n{{prefix}}\"\nprover_step_separator: \"{SEP}\"\n")
    return path


def test_soft_labels_reach_training(tmp_path):
    from actprm.labels import LabelCounts, join_annotations, step_targets
    from pipelines.annotate import run as run_annotate

    data = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([TRAJ]), data)
    c = AnnotateConfig(**cfg(stop_at_error=False, rollout_labels="soft").model_dump(), input=[str(data)],
                       output=str(tmp_path / "ann"))
    run_annotate(c, progress=False, annotator=RolloutAnnotator(c, client=HandClient()))
    rows = join_annotations([str(data)], [str(tmp_path / "ann" / "annotations")], LabelCounts())
    assert rows[0]["label_source"] == "rollout" and rows[0]["step_labels"] == pytest.approx([0.75, 0.25, 0.0, 1.0])
    assert step_targets(rows[0]["label_first_error"], 4, rows[0]["step_labels"]) == pytest.approx([0.75, 0.25, 0.0, 1.0])


def test_local_backbone_prover_is_seeded_and_batch_independent():
    import torch

    from actprm.judge.prover import (
        CHATML_PROMPT,
        LocalProver,
        choice_seed,
        prefix_prompt,
    )
    from actprm.world.arith import Generator

    torch.set_num_threads(1)
    prover = LocalProver()
    rows = list(Generator(seed=0).rows(0, 3))
    prompts = [prefix_prompt(CHATML_PROMPT, r["problem"], r["steps"][:1], "<extra_0>") for r in rows]
    alone = prover.generate(prompts[:1], [choice_seed(7, 0)], max_tokens=60, temperature=0.7)
    batched = prover.generate(prompts, [choice_seed(7, 0), 1, 2], max_tokens=60, temperature=0.7)
    assert alone[0].text == batched[0].text and alone[0].tokens > 0
    # it continues the world's format: the next step starts from the value the prefix carried
    value = rows[0]["steps"][0].split("= ")[1].split(",")[0]
    assert alone[0].text.startswith(value + " ")


def test_local_backbone_rollouts_on_a_wrong_first_step():
    from actprm.world.arith import Generator

    wrong = next(r for r in Generator(seed=0).rows(0, 200, "eval") if r["first_error_step"] == 0 and len(r["steps"]) <= 3)
    ann = RolloutAnnotator(JudgeConfig(backend="rollout", rollouts=2, temperature=0.5, max_tokens=96, prover_threads=1))
    row = ann.annotate([wrong])[0]
    # the world carries a wrong value on: no completion from the wrong step reaches the reference
    assert row["error"] is None and row["step_values"][0] == 0.0 and row["first_error_step"] == 0
    assert row["completion_tokens"] > 0 and row["judge"].startswith("rollout(prover=actprm/assets/backbone,k=2")
