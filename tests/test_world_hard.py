"""The long-curve world regime (configs/worlds/arith-hard.yaml): exact rows, rare mistakes, unfamiliar verbs."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from conftest import REPO, recheck_steps

from actprm.world.arith import ArithWorld, Generator, load_world

HARD = REPO / "configs" / "worlds" / "arith-hard.yaml"

# an independent checker written from the text rules (both phrasings), not from the generator
START = re.compile(r"^(?P<name>[A-Z][a-z]+) has (?P<value>\d+) (?P<item>[a-z]+)\.")
OPERATION = re.compile(
    r"(?:buys|finds|gets) (?P<add>\d+) more\.|(?:trades for|is handed|wins) (?P<add2>\d+)(?: extra| in a raffle)\."
    r"|(?:gives away|loses|sells) (?P<sub>\d+)\.|(?:trades off|hands over|spends) (?P<sub2>\d+)(?: in a raffle)?\."
    r"|ends up with (?P<mul1>\d+) times as many\.|is multiplied by (?P<mul2>\d+)\."
)


def recheck(problem: str, steps: list[str]) -> tuple[int, int, int]:
    """(first wrong step or -1, final written value, true answer) from the text alone."""
    value = int(START.match(problem).group("value"))
    ops = []
    for m in OPERATION.finditer(problem):
        kind = next(k for k, v in m.groupdict().items() if v is not None)
        ops.append((kind[:3], int(m.group(kind))))
    assert len(ops) == len(steps), (problem, steps)
    return recheck_steps(value, ops, steps)


@pytest.fixture(scope="module")
def world():
    return load_world(str(HARD))


@pytest.fixture(scope="module")
def pool(world):
    return list(Generator(world, seed=3).rows(0, 6000))


def test_hard_rows_are_exact(world, pool):
    evals = list(Generator(world, seed=3).rows(0, 2000, "eval"))
    for row in pool + evals:
        first, final, true = recheck(row["problem"], row["steps"])
        assert first == row["first_error_step"], (row["problem"], row["steps"])
        assert str(true) == row["reference_answer"]
        assert row["final_answer_correct"] == (final == true)
    assert sum(r["first_error_step"] >= 0 for r in evals) > 800  # the eval set still has errors to find


def test_hard_regime_has_rare_mistakes_and_unfamiliar_verbs(world, pool):
    share_wrong = sum(r["first_error_step"] >= 0 for r in pool) / len(pool)
    assert 0.07 <= share_wrong <= 0.14  # most trajectories teach little
    novel = [r for r in pool if json.loads(r["meta"]).get("novel")]
    assert abs(len(novel) / len(pool) - world.novel_share) < 0.03
    assert all(not re.search(r"buys|finds|gets|gives away|loses|sells", r["problem"]) for r in novel)
    kinds = Counter(json.loads(r["meta"])["error_kind"] for r in novel if r["first_error_step"] >= 0)
    assert kinds["wrong_operation"] > kinds["wrong_result"] > 0  # the verb misread: mostly the wrong operation
    assert "wrong_carry" not in kinds
    familiar = Counter(json.loads(r["meta"])["error_kind"] for r in pool
                       if r["first_error_step"] >= 0 and not json.loads(r["meta"]).get("novel"))
    assert familiar["wrong_result"] > 3 * familiar["wrong_carry"] > 0  # common and rare kinds


def test_options_off_leave_the_default_world_as_it_was():
    # the fingerprint (every row's source) of the default world is the one rows were generated with before
    assert ArithWorld().fingerprint() == "053da81f"
    assert load_world(str(HARD)).fingerprint() != ArithWorld().fingerprint()
    assert "novel" not in Generator(seed=3).row(0)["meta"]
