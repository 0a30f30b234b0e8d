"""Hygiene in `actprm filter`: exact duplicates (normalised), near-duplicate problems (MinHash) and ProcessBench
problems are removed to the errors table with their reasons; nothing else is touched."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm import hygiene
from actprm.cli import main
from actprm.io.readers import Batch
from actprm.world.arith import Generator
from conftest import PROCESSBENCH

needs_pb = pytest.mark.skipif(not PROCESSBENCH.is_dir(), reason="ProcessBench data not present")


def pb_item(name: str, index: int) -> dict:
    return json.loads((PROCESSBENCH / f"{name}.json").read_text())[index]


@needs_pb
def test_filter_removes_duplicates_and_processbench_problems_with_reasons(tmp_path, local_ray, capsys):
    rows = list(Generator(seed=5).rows(0, 200))
    copy = dict(rows[7], id="copy-of-7", problem="  " + rows[7]["problem"].upper() + " ",
                steps=[s.replace(" ", "  ") for s in rows[7]["steps"]])
    gsm = pb_item("gsm8k", 0)
    leaked = {"id": "leaked", "problem": gsm["problem"], "steps": ["1 + 1 = 2", "The answer is 2."]}
    near = {"id": "near-leak", "problem": gsm["problem"].replace("?", " exactly?"), "steps": ["2 + 2 = 4"]}
    math_item = pb_item("math", 3)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:100]), corpus / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[100:] + [copy, leaked]), corpus / "b.parquet")
    (corpus / "c.jsonl").write_text(json.dumps(near) + "\n" + json.dumps(
        {"id": "math-leak", "problem": math_item["problem"].lower(), "steps": math_item["steps"]}) + "\n")
    out = tmp_path / "f"
    assert main(["filter", "--input", str(corpus), "--output", str(out), "--actors", "1", "--threads", "1",
                 "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "204 rows read, 200 scored" in line and "contaminated 3" in line and "duplicate content 1" in line
    errors = {e["id"]: e for e in pq.read_table(out / "errors").to_pylist()}
    assert set(errors) == {"copy-of-7", "leaked", "near-leak", "math-leak"}
    assert errors["copy-of-7"]["reason"] == (f"duplicate content: the same problem and steps (normalised) as "
                                             f"id {rows[7]['id']}")
    assert errors["leaked"]["reason"] == f"contaminated: the problem of gsm8k.json id {gsm['id']}"
    assert errors["near-leak"]["reason"] == f"contaminated: nearly the problem of gsm8k.json id {gsm['id']}"
    assert errors["math-leak"]["reason"].startswith("contaminated: the problem of math.json")
    assert json.loads(errors["leaked"]["row_json"])["problem"] == gsm["problem"]  # the row, kept whole
    scored = pq.read_table(out / "scored").column("id").to_pylist()
    assert sorted(scored) == sorted(r["id"] for r in rows)  # every world row scored once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hygiene"]["removed"] == {"duplicate content": 1, "contaminated": 3}
    assert summary["hygiene"]["decontaminate"][0].endswith("processbench")

    # both rules off: the same corpus goes through whole (the exact copy and the leaks are scored)
    assert main(["filter", "--input", str(corpus), "--output", str(tmp_path / "g"), "--actors", "1",
                 "--threads", "1", "--no-dedup", "--no-decontaminate", "--no-progress"]) == 0
    assert pq.read_table(tmp_path / "g" / "scored").num_rows == 204
    assert main(["filter", "--input", str(corpus), "--output", str(tmp_path / "h"),
                 "--decontaminate", str(tmp_path / "missing"), "--no-progress"]) == 2


def batches_of(rows):
    return [Batch("f", rows, [], list(range(len(rows))))]


def test_near_duplicate_problems_keep_the_first_wording_and_all_its_rollouts():
    a = ("A farmer has 12 cows and buys 7 more at the market on Tuesday. Then 3 of the cows wander off "
         "into the forest. How many cows does the farmer have at the end of the week?")
    a_near = a.replace("on Tuesday", "on Wednesday")
    b = "Find every real x such that x squared minus five x plus six equals zero, and give their sum."
    rows = [{"id": "a1", "problem": a, "steps": ["12 + 7 = 19", "19 - 3 = 16"]},
            {"id": "a2", "problem": a, "steps": ["12 + 7 = 18", "18 - 3 = 15"]},  # another rollout: kept
            {"id": "n1", "problem": a_near, "steps": ["12 + 7 = 19"]},
            {"id": "b1", "problem": b, "steps": ["x = 2 or x = 3", "5"]},
            {"id": "n2", "problem": a_near.upper(), "steps": ["12 + 7 = 19", "19 - 3 = 16"]}]
    cfg = SimpleNamespace(dedup=True, near_dedup=True, near_dedup_threshold=0.8, decontaminate_threshold=0.8)
    info = hygiene.file_hygiene(batches_of(rows), cfg, [])
    removed = hygiene.plan_removals([info], [{}], cfg)[0]
    assert sorted(removed) == [2, 4]  # n1 and n2; a2 (same problem, other steps) and b1 stay
    assert removed[2].startswith("near-duplicate problem: nearly the problem of id a1")
    cfg.near_dedup = False
    info = hygiene.file_hygiene(batches_of(rows), cfg, [])
    assert hygiene.plan_removals([info], [{}], cfg)[0] == {}


def test_normalisation_and_keys():
    assert hygiene.normalise("  Ａ  b\n\tC ") == "a b c"  # NFKC, case, whitespace
    assert hygiene.content_key("P", ["x  y"]) == hygiene.content_key(" p ", ["X Y"])
    assert hygiene.content_key("P", ["x", "y"]) != hygiene.content_key("P", ["x y"])
