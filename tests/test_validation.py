"""Per-row validation: every bad-row kind goes to errors with its reason; good rows pass."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from actprm.io.readers import iter_batches, open_corpus
from actprm.schemas import Limits
from conftest import good_row

BAD = [
    ({"problem": "p", "steps": ["a"]}, "missing id"),  # in a file that has ids
    ({"id": None, "problem": "p", "steps": ["a"]}, "missing id"),
    ({"id": "t0", "problem": "dup", "steps": ["a"]}, "duplicate id"),
    ({"id": "np", "problem": None, "steps": ["a"]}, "missing problem"),
    ({"id": "ns", "problem": "p", "steps": None}, "missing steps"),
    ({"id": "es", "problem": "p", "steps": []}, "empty steps"),
    ({"id": "nullstep", "problem": "p", "steps": ["a", None]}, "null step"),
    ({"id": "intstep", "problem": "p", "steps": ["a", 3]}, "wrong type"),
    ({"id": "bigstep", "problem": "p", "steps": ["x" * 101]}, "too large"),
    ({"id": "bigprob", "problem": "y" * 201, "steps": ["a"]}, "too large"),
    ({"id": "fes-high", "problem": "p", "steps": ["a", "b"], "first_error_step": 2}, "bad first_error_step"),
    ({"id": "fes-neg", "problem": "p", "steps": ["a", "b"], "first_error_step": -2}, "bad first_error_step"),
    ({"id": "fes-str", "problem": "p", "steps": ["a"], "first_error_step": "0"}, "wrong type"),
    ({"id": 7, "problem": "p", "steps": ["a"]}, "wrong type"),
    ({"id": "steps-str", "problem": "p", "steps": "a"}, "wrong type"),
    ({"id": "fac", "problem": "p", "steps": ["a"], "final_answer_correct": "yes"}, "wrong type"),
    ([1, 2, 3], "wrong type"),
]


def test_every_bad_row_kind_is_quarantined_and_good_rows_pass(write_jsonl):
    good = [good_row(i) for i in range(3)]
    rows = [good[0]] + [r for r, _ in BAD] + good[1:]
    path = write_jsonl("mixed.jsonl", rows, raw_lines=['{"id": "broken", "problem": ', "not json at all"])
    valid, errors = [], []
    for batch in iter_batches(open_corpus([path]), limits=Limits(max_problem_chars=200, max_step_chars=100)):
        valid += batch.valid
        errors += batch.errors
    assert [r["id"] for r in valid] == ["t0", "t1", "t2"]
    assert len(errors) == len(BAD) + 2
    by_row = {e["row_index"]: e for e in errors}
    for offset, (record, kind) in enumerate(BAD, start=1):
        err = by_row[offset]
        assert err["reason"].startswith(kind + ":"), (record, err["reason"])
        assert json.loads(err["row_json"]) == record  # the original row, nothing lost
        assert err["source_file"] == str(path)
    assert by_row[len(BAD) + 3]["reason"].startswith("invalid JSON")
    assert by_row[len(BAD) + 3]["row_json"] == '{"id": "broken", "problem": '
    assert by_row[len(BAD) + 4]["row_json"] == "not json at all"
    dup = by_row[3]
    assert dup["id"] == "t0" and "mixed.jsonl row 0" in dup["reason"]


def test_duplicate_across_files_first_occurrence_wins(tmp_path, write_jsonl):
    write_jsonl("a.jsonl", [good_row(1), good_row(2)])
    pq.write_table(pa.Table.from_pylist([good_row(2, problem="again"), good_row(3)]), tmp_path / "b.parquet")
    valid, errors = [], []
    for batch in iter_batches(open_corpus([tmp_path])):
        valid += batch.valid
        errors += batch.errors
    assert [r["id"] for r in valid] == ["t1", "t2", "t3"]
    assert valid[1]["problem"] == "What is 2 + 1?"
    assert [(e["id"], e["row_index"], e["source_file"].endswith("b.parquet")) for e in errors] == [("t2", 0, True)]
