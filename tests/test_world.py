"""The arithmetic world: determinism, labels re-derived from the text alone, rates vs config."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO, WORLD_STEP, recheck_steps

from actprm.cli import main
from actprm.schemas import arrow_schema
from actprm.world.arith import ArithWorld, Generator

# --------------------------------------------------------------------------- an independent checker
# Written from the text rules only (not from the generator): parse the problem's operations, then
# check each step `a op b = c` against the value written by the step before.

START = re.compile(r"^(?P<name>[A-Z][a-z]+) has (?P<value>\d+) (?P<item>[a-z]+)\.")
OPERATION = re.compile(
    r"(?:buys|finds|gets) (?P<add>\d+) more\."
    r"|(?:gives away|loses|sells) (?P<sub>\d+)\."
    r"|ends up with (?P<mul1>\d+) times as many\."
    r"|is multiplied by (?P<mul2>\d+)\."
)


def parse_problem(problem: str) -> tuple[int, list[tuple[str, int]]]:
    start = START.match(problem)
    assert start, problem
    ops = []
    for m in OPERATION.finditer(problem):
        kind = next(k for k, v in m.groupdict().items() if v is not None)
        ops.append(("mul" if kind.startswith("mul") else kind, int(m.group(kind))))
    return int(start.group("value")), ops


def first_wrong_step(problem: str, steps: list[str]) -> tuple[int, int, int]:
    """(first wrong step or -1, the final written value, the true answer) from the text."""
    value, ops = parse_problem(problem)
    assert len(ops) == len(steps)
    return recheck_steps(value, ops, steps)


@pytest.fixture(scope="module")
def pool():
    return list(Generator(seed=3).rows(0, 6000))


@pytest.fixture(scope="module")
def eval_rows():
    return list(Generator(seed=3).rows(0, 3000, "eval"))


# --------------------------------------------------------------------------- tests


def test_labels_agree_with_an_independent_recomputation(pool, eval_rows):
    for row in pool + eval_rows:
        first, final, true = first_wrong_step(row["problem"], row["steps"])
        assert first == row["first_error_step"], (row["problem"], row["steps"])
        assert str(true) == row["reference_answer"]
        assert row["final_answer_correct"] == (final == true)
        if first == -1:
            assert row["final_answer_correct"]


def test_text_rules_hold(pool):
    world = ArithWorld()
    for row in pool:
        value, ops = parse_problem(row["problem"])
        assert 1 <= value <= world.max_value
        assert all(1 <= b <= 99 for _, b in ops)
        for k, step in enumerate(row["steps"]):
            if row["first_error_step"] == -1 or k < row["first_error_step"]:
                a, c = (int(x) for x in WORLD_STEP.match(step).group("a", "c"))
                assert 1 <= a <= world.max_value and 1 <= c <= world.max_value  # correct values: two digits
            assert "," not in step.split(",")[0] and "." not in step.split(",")[0]  # no separators or decimals


def test_deterministic_and_independent_of_chunking():
    a = list(Generator(seed=7).rows(0, 300))
    b = list(Generator(seed=7).rows(0, 150)) + list(Generator(seed=7).rows(150, 300))
    assert a == b
    c = list(Generator(seed=8).rows(0, 300))
    assert sum(x["steps"] == y["steps"] for x, y in zip(a, c)) < 10
    assert len({r["id"] for r in a}) == 300


def test_splits_are_separate_streams():
    g = Generator(seed=0)
    train = {tuple(r["steps"]) for r in g.rows(0, 2000)}
    held_out = [tuple(r["steps"]) for r in g.rows(0, 2000, "eval")]
    assert sum(s in train for s in held_out) < 20  # only chance collisions of tiny problems
    assert all(r["first_error_step"] == -1 for r in g.rows(0, 200, "lm"))


def test_share_all_correct_like_real_rollouts(pool):
    share = sum(r["first_error_step"] == -1 for r in pool) / len(pool)
    assert 0.30 <= share <= 0.70


def test_eval_set_is_balanced(eval_rows):
    n = len(eval_rows)
    wrong = sum(r["first_error_step"] >= 0 for r in eval_rows)
    se = math.sqrt(0.25 / n)
    assert abs(wrong / n - 0.5) < 4 * se
    positions = Counter(r["first_error_step"] for r in eval_rows if r["first_error_step"] >= 0)
    assert len(positions) >= 6  # errors at many positions, not only the first step


def test_error_kinds_match_config(pool):
    world = ArithWorld()
    kinds = Counter(json.loads(r["meta"])["error_kind"] for r in pool if r["first_error_step"] >= 0)
    n = sum(kinds.values())
    total = sum(world.error_kinds.values())
    for kind, weight in world.error_kinds.items():
        p = weight / total
        se = math.sqrt(p * (1 - p) / n)
        # wrong_result also takes the rare mistakes whose kind had no in-range option
        assert abs(kinds[kind] / n - p) < 4 * se + 0.01, (kind, kinds[kind] / n, p)


def test_step_error_rates_match_config(pool):
    """Observed first mistakes per operation vs the configured hazard summed over the steps reached."""
    world = ArithWorld()
    expected, variance, observed = Counter(), Counter(), Counter()
    for row in pool:
        ops = json.loads(row["meta"])["ops"]
        n = len(ops)
        first = row["first_error_step"]
        reached = n if first == -1 else first + 1
        for i in range(reached):
            p = world.step_error_rate[ops[i]] * (1 + world.late_error_factor * (i / (n - 1) if n > 1 else 0))
            expected[ops[i]] += p
            variance[ops[i]] += p * (1 - p)
        if first >= 0:
            observed[ops[first]] += 1
    for op in world.step_error_rate:
        assert abs(observed[op] - expected[op]) < 4 * math.sqrt(variance[op]) + 5, (op, observed[op], expected[op])


def test_yaml_documents_the_defaults():
    data = yaml.safe_load((REPO / "configs" / "worlds" / "arith.yaml").read_text())
    assert ArithWorld.model_validate(data) == ArithWorld()


# --------------------------------------------------------------------------- the CLI


def test_generate_cli_writes_valid_shards_deterministically(tmp_path, capsys):
    out1, out2 = tmp_path / "a", tmp_path / "b"
    assert main(["generate", "--world", "arith", "--n", "250", "--seed", "5", "--output", str(out1),
                 "--no-progress"]) == 0
    assert main(["generate", "--n", "250", "--seed", "5", "--shard-rows", "100", "--output", str(out2),
                 "--no-progress"]) == 0
    assert "generate: 250 train trajectories" in capsys.readouterr().out
    t1 = pq.read_table(sorted(out1.glob("*.parquet")))
    t2 = pq.read_table(sorted(out2.glob("*.parquet")))
    assert len(list(out2.glob("*.parquet"))) == 3
    assert t1.schema == arrow_schema("trajectories")
    assert t1.to_pylist() == t2.to_pylist()
    meta = json.loads((out1 / "_world.json").read_text())
    assert meta["rows"] == 250 and meta["source"] == t1["source"][0].as_py()
    # the output directory is itself a valid input: every row passes validation
    assert main(["validate", "--input", str(out1), "--output", str(tmp_path / "checked"), "--no-progress"]) == 0
    assert "250 valid" in capsys.readouterr().out


def test_generate_cli_refuses_to_clobber_and_reads_world_yaml(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["generate", "--n", "20", "--output", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", "--n", "20", "--output", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_value: 5\n")
    assert main(["generate", "--n", "20", "--world-config", str(bad), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_value" in err
    custom = tmp_path / "all_easy.yaml"
    custom.write_text(yaml.safe_dump({"levels": {"easy": {"weight": 1, "min_steps": 2, "max_steps": 2,
                                                          "ops": {"add1": 1}}}}))
    assert main(["generate", "--n", "50", "--world-config", str(custom), "--output", str(tmp_path / "c"),
                 "--no-progress"]) == 0
    rows = pq.read_table(sorted((tmp_path / "c").glob("*.parquet"))).to_pylist()
    assert all(len(r["steps"]) == 2 for r in rows)
