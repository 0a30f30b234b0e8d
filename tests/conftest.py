import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROCESSBENCH = REPO.parent / "shared" / "data" / "processbench"


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray for one test module (4 logical CPUs on any machine), shut down after it.

    Module scope, not session: Ray state does not leak from one module into the next.
    """
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, rows: list, raw_lines: list[str] | None = None) -> Path:
        path = tmp_path / name
        lines = [json.dumps(r) for r in rows] + list(raw_lines or [])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    return write


def good_row(i: int, **extra) -> dict:
    return {"id": f"t{i}", "problem": f"What is {i} + 1?", "steps": [f"{i} + 1 = {i + 1}", f"The answer is {i + 1}."],
            "first_error_step": -1, **extra}


@pytest.fixture
def served(tmp_path):
    """start(n=60, **FakeJudge kwargs) -> (rows, fake, server, data file): n world eval rows (about half
    with an error) in a Parquet file and a stand-in judge on 127.0.0.1 that knows their labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actprm.testing.judge_server import FakeJudge, JudgeServer, truth_from_rows
    from actprm.world.arith import Generator

    servers = []

    def start(n=60, **kw):
        rows = list(Generator(seed=0).rows(0, n, "eval"))
        fake = FakeJudge(truth_from_rows(rows), **kw)
        servers.append(JudgeServer(fake).start())
        data = tmp_path / "world.parquet"
        pq.write_table(pa.Table.from_pylist(rows), data)
        return rows, fake, servers[-1], data

    yield start
    for s in servers:
        s.stop()


# a world step written out: "a op b = c, so NAME has c ITEMs." (or "so the answer is c.")
WORLD_STEP = re.compile(r"^(?P<a>\d+) (?P<op>[-+×*]) (?P<b>\d+) = (?P<c>\d+), "
                        r"so (?:[A-Z][a-z]+ has (?P=c) [a-z]+|the answer is (?P=c))\.$")


def recheck_steps(value: int, ops: list[tuple[str, int]], steps: list[str]) -> tuple[int, int, int]:
    """(first wrong step or -1, the final written value, the true answer) of world steps, re-done from the
    problem's start value and operations (add/sub/mul, operand) alone: the worlds' tests' own arithmetic."""
    true, first = value, -1
    for i, (step, (op, operand)) in enumerate(zip(steps, ops)):
        m = WORLD_STEP.match(step)
        assert m, step
        a, b, c = int(m["a"]), int(m["b"]), int(m["c"])
        sym = {"+": "add", "-": "sub", "×": "mul", "*": "mul"}[m["op"]]
        computed = a + b if sym == "add" else a - b if sym == "sub" else a * b
        if first < 0 and (a != value or sym != op or b != operand or c != computed):
            first = i
        value = c
        true = true + operand if op == "add" else true - operand if op == "sub" else true * operand
    return first, value, true
