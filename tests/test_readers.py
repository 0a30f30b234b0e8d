"""Readers: every input format, ProcessBench as published, content ids, streaming."""

import gzip
import json
import os
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.errors import UserError
from actprm.io.formats import content_id
from actprm.io.readers import iter_batches, list_files, open_corpus
from conftest import PROCESSBENCH, REPO, good_row


def read_all(inputs, fmt="auto", **kw):
    valid, errors = [], []
    for batch in iter_batches(open_corpus(inputs, fmt), **kw):
        valid += batch.valid
        errors += batch.errors
    return valid, errors


@pytest.mark.skipif(not PROCESSBENCH.exists(), reason="shared ProcessBench files not present")
def test_processbench_all_3400_rows_with_labels():
    valid, errors = read_all([PROCESSBENCH])
    assert errors == []
    assert len(valid) == 3400
    by_id = {r["id"]: r for r in valid}
    expected = {}
    for name, n in [("gsm8k", 400), ("math", 1000), ("olympiadbench", 1000), ("omnimath", 1000)]:
        records = json.loads((PROCESSBENCH / f"{name}.json").read_text())
        assert len(records) == n
        for rec in records:
            expected[rec["id"]] = rec
            assert by_id[rec["id"]]["source"] == f"processbench/{name}"
    assert set(by_id) == set(expected)
    for rid, rec in expected.items():
        row = by_id[rid]
        assert row["first_error_step"] == rec["label"]
        assert row["steps"] == rec["steps"]
        assert row["problem"] == rec["problem"]
        assert row["final_answer_correct"] == rec["final_answer_correct"]
        assert json.loads(row["meta"]) == {"generator": rec["generator"]}
    assert sum(r["first_error_step"] == -1 for r in valid) > 0
    assert sum(r["first_error_step"] >= 0 for r in valid) > 0


def test_parquet_file_directory_and_glob(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    rows = [good_row(i) for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows[:6]), shards / "a.parquet")
    # polars writes large_string / large_list: must read the same
    pl.DataFrame(rows[6:]).write_parquet(shards / "b.parquet")
    (shards / "README.txt").write_text("not data")  # ignored inside a directory
    for inputs in ([shards], [str(shards / "*.parquet")], [shards / "a.parquet", shards / "b.parquet"]):
        valid, errors = read_all(inputs)
        assert errors == []
        assert [r["id"] for r in valid] == [f"t{i}" for i in range(10)]
        assert valid[7]["steps"] == rows[7]["steps"]


def test_jsonl_and_gzip(tmp_path, write_jsonl):
    path = write_jsonl("rows.jsonl", [good_row(0), good_row(1, source="mine", reference_answer="2")])
    valid, errors = read_all([path])
    assert [r["id"] for r in valid] == ["t0", "t1"] and errors == []
    assert valid[1]["source"] == "mine" and valid[1]["reference_answer"] == "2"
    gz = tmp_path / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert read_all([gz])[0] == valid


def test_activeprm_format(write_jsonl):
    path = write_jsonl("apm.jsonl", [
        {"question": "q1", "steps": ["a", "b", "c"], "hard_labels": [1, 0, 0]},
        {"question": "q2", "steps": ["a", "b"], "hard_labels": [1, 1]},
        {"question": "q3", "steps": ["a", "b", "c"], "hard_labels": [1]},  # truncated labels: unknown
    ])
    valid, errors = read_all([path])
    assert errors == []
    assert [r["problem"] for r in valid] == ["q1", "q2", "q3"]
    assert [r["first_error_step"] for r in valid] == [1, -1, None]
    assert all(r["id"].startswith("h-") for r in valid)


def test_trl_stepwise_format(tmp_path):
    rows = [{"prompt": "p", "completions": ["s1", "s2", "s3"], "labels": [True, True, False]},
            {"prompt": "p2", "completions": ["s1"], "labels": [True]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "trl.parquet")
    valid, errors = read_all([tmp_path / "trl.parquet"])
    assert errors == []
    assert [(r["problem"], r["steps"], r["first_error_step"]) for r in valid] == [
        ("p", ["s1", "s2", "s3"], 2), ("p2", ["s1"], -1)]


def test_raw_rollouts_split_on_blank_lines(write_jsonl):
    path = write_jsonl("ro.jsonl", [{"problem": "2+2?", "response": "First, 2+2.\n\n\n\nSo 4.\n\nAnswer: 4\n"}])
    valid, _ = read_all([path])
    assert valid[0]["steps"] == ["First, 2+2.", "So 4.", "Answer: 4"]
    path2 = write_jsonl("ro2.jsonl", [{"problem": "2+2?", "response": "a ## b ## c"}])
    valid, _ = read_all([path2], fmt="rollout", step_separator="##")
    assert valid[0]["steps"] == ["a", "b", "c"]


def test_processbench_json_array_from_a_handmade_file(tmp_path):
    records = [{"id": "x-0", "generator": "g", "problem": "p", "steps": ["a", "b"], "final_answer_correct": False,
                "label": 1}]
    (tmp_path / "mini.json").write_text(json.dumps(records))
    valid, errors = read_all([tmp_path / "mini.json"])
    assert errors == [] and valid[0]["first_error_step"] == 1 and valid[0]["source"] == "processbench/mini"


def test_content_ids_stable_across_runs_and_processes(write_jsonl):
    rows = [{"question": f"q{i}", "steps": [f"s{i}", "t"], "hard_labels": [1, 1]} for i in range(5)]
    path = write_jsonl("apm.jsonl", rows)
    first = [r["id"] for r in read_all([path])[0]]
    second = [r["id"] for r in read_all([path])[0]]
    assert first == second and len(set(first)) == 5
    code = ("from actprm.io.formats import content_id;"
            "print(content_id('q0', ['s0', 't']))")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert other.stdout.strip() == first[0] == content_id("q0", ["s0", "t"])
    # a pinned value: the same on every machine, forever (changing it breaks users' joins)
    assert content_id("q0", ["s0", "t"]) == "h-" + __import__("hashlib").sha256(
        b'["q0",["s0","t"]]').hexdigest()[:24]


def test_reading_streams_in_batches(tmp_path):
    rows = [good_row(i) for i in range(1000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "big.parquet", row_group_size=100)
    sizes = [b.n_read for b in iter_batches(open_corpus([tmp_path]), batch_rows=128)]
    assert sum(sizes) == 1000 and max(sizes) <= 128 and len(sizes) >= 8


def test_list_files_errors(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        list_files([tmp_path / "nope"])
    with pytest.raises(UserError, match="no file matches"):
        list_files([str(tmp_path / "*.parquet")])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="unsupported file type"):
        list_files([tmp_path / "x.csv"])
    with pytest.raises(UserError, match="no rows in .*no data file"):  # a directory with no data files
        list_files([tmp_path])


def test_activeprm_soft_labels_are_step_labels_beside_the_hard_label(write_jsonl):
    import json

    from actprm.labels import LabelCounts, read_labelled, step_targets

    path = write_jsonl("apm_soft.jsonl", [
        {"question": "q1", "steps": ["a", "b", "c"], "hard_labels": [1, 0, 0], "soft_labels": [0.9, 0.25, 0.0]},
        {"question": "q2", "steps": ["a", "b"], "hard_labels": [1, 1], "soft_labels": [1, None]},
        {"question": "q3", "steps": ["a"], "hard_labels": [1], "soft_labels": [1.5]},  # out of [0, 1]
        {"question": "q4", "steps": ["a"], "hard_labels": [1]},
    ])
    valid, errors = read_all([path])
    assert [e["reason"].split(":")[0] for e in errors] == ["bad label"]
    metas = [json.loads(r["meta"]) if r["meta"] else {} for r in valid]
    assert [m.get("step_labels") for m in metas] == [[0.9, 0.25, 0.0], [1.0, None], None]
    assert [r["first_error_step"] for r in valid] == [1, -1, -1]
    # `actprm train --labelled` on the ActivePRM file: the soft labels are the training targets
    rows = read_labelled([str(path)], LabelCounts())
    assert [(r["problem"], r["label_first_error"], r["step_labels"]) for r in rows] == [
        ("q1", 1, [0.9, 0.25, 0.0]), ("q2", -1, [1.0, None]), ("q4", -1, None)]
    assert step_targets(rows[0]["label_first_error"], 3, rows[0]["step_labels"]) == [0.9, 0.25, 0.0]
    assert step_targets(rows[2]["label_first_error"], 1, rows[2]["step_labels"]) == [1.0]



def test_a_parquet_file_with_a_column_twice_is_a_file_error(tmp_path, capsys):
    """Two `id` columns: a reader keeps one of them without a word; the file is refused, naming the column."""
    from actprm.cli import main
    from actprm.io.readers import inspect_file

    path = tmp_path / "twice.parquet"
    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["p"]), pa.array([["s"]])],
                                 names=["id", "id", "problem", "steps"])
    pq.write_table(table, path)
    with pytest.raises(UserError, match="column 'id' appears more than once"):
        inspect_file(path)
    assert main(["validate", "--input", str(path), "--output", str(tmp_path / "out")]) == 2
    assert "appears more than once" in capsys.readouterr().err


def test_a_parquet_chunk_too_large_uncompressed_is_refused_from_the_metadata(tmp_path):
    """A small file whose column chunk decompresses to far more than its size (1 GiB of text in 10 KB took
    6 GB of memory to read): refused from the metadata, before anything is decompressed."""
    from actprm.io.readers import inspect_file
    from actprm.schemas import Limits

    path = tmp_path / "bomb.parquet"
    rows = [{"id": f"r{i}", "problem": "p", "steps": ["a" * 50_000]} for i in range(40)]  # 2 MB of 'a'
    pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd", use_dictionary=False)
    assert path.stat().st_size < 50_000
    with pytest.raises(UserError, match=r"column 'steps.*MiB uncompressed; at most 1 MiB"):
        inspect_file(path, limits=Limits(max_chunk_bytes=2**20))
    assert inspect_file(path).n_rows == 40  # under the default bound: read as usual
