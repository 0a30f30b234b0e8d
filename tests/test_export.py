"""`actprm export` (pipelines/export.py): TRL's stepwise format and ActivePRM's, from trajectories and labelled tables."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.world.arith import Generator
from pipelines.export import convert
from pipelines.export import export as run_export


@pytest.fixture
def world(tmp_path):
    rows = list(Generator(seed=0).rows(0, 40, "eval"))
    path = tmp_path / "world.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows, path


def test_trl_rows_keep_the_steps_up_to_the_earliest_error(world, tmp_path):
    rows, path = world
    assert main(["export", "--format", "trl", "--input", str(path), "--output", str(tmp_path / "trl.parquet")]) == 0
    table = pq.read_table(tmp_path / "trl.parquet")
    # TRL's documented stepwise-supervision columns and types (+ label_probs, + id)
    assert table.schema.field("prompt").type == pa.string()
    assert table.schema.field("completions").type == pa.list_(pa.string())
    assert table.schema.field("labels").type == pa.list_(pa.bool_())
    assert table.schema.field("label_probs").type == pa.list_(pa.float32())
    out = {r["id"]: r for r in table.to_pylist()}
    assert len(out) == len(rows)
    for row in rows:
        got, fe = out[row["id"]], row["first_error_step"]
        assert got["prompt"] == row["problem"]
        if fe == -1:
            assert got["completions"] == row["steps"] and all(got["labels"])
        else:  # steps after the earliest error are unlabelled: dropped
            assert got["completions"] == row["steps"][: fe + 1]
            assert got["labels"] == [True] * fe + [False]
        assert got["label_probs"] == [float(x) for x in got["labels"]]


def test_activeprm_rows_and_round_trip_through_the_reader(world, tmp_path):
    from actprm.io.readers import iter_batches, open_corpus

    rows, path = world
    result = run_export(str(path), str(tmp_path / "a.jsonl"), "activeprm")
    assert result.rows == len(rows)
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert set(lines[0]) == {"id", "question", "steps", "hard_labels"}
    assert all(isinstance(v, int) for line in lines for v in line["hard_labels"])
    back = {r["id"]: r["first_error_step"] for b in iter_batches(open_corpus([str(tmp_path / "a.jsonl")], "activeprm"))
            for r in b.valid}
    assert back == {r["id"]: r["first_error_step"] for r in rows}


def test_labelled_table_soft_labels_go_to_label_probs(tmp_path):
    row = {"id": "x", "problem": "p", "steps": ["a", "b", "c"], "label_first_error": 1, "label_source": "rollout",
           "step_labels": [0.75, 0.0, None], "label_weight": 1.0}
    path = tmp_path / "labelled.parquet"
    pq.write_table(pa.Table.from_pylist([row, {**row, "id": "y", "label_first_error": None}]), path)
    result = run_export(str(path), str(tmp_path / "t.jsonl"), "trl")
    out = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert out == [{"id": "x", "prompt": "p", "completions": ["a", "b"], "labels": [True, False], "label_probs": [0.75, 0.0]}]
    assert result.skipped == {"no label": 1}
    assert convert({"problem": "p", "steps": ["a"], "first_error_step": 3}, "trl") == "bad label"


def test_user_errors_exit_2(world, tmp_path, capsys):
    _, path = world
    out = tmp_path / "x.parquet"
    assert main(["export", "--input", str(tmp_path / "missing.parquet"), "--output", str(out)]) == 2
    assert main(["export", "--input", str(path)]) == 2
    out.write_text("")
    assert main(["export", "--input", str(path), "--output", str(out)]) == 2  # exists, no --overwrite
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("actprm: error: ") for e in errors)


def test_trl_tokenises_the_export(world, tmp_path):
    prm = pytest.importorskip("trl.experimental.prm", reason="TRL's PRMTrainer (removed after TRL 1.13)")
    from actprm.tokens import load_tokenizer

    _, path = world
    run_export(str(path), str(tmp_path / "trl.parquet"), "trl")
    tokenizer = load_tokenizer()  # the project's tokenizer (the world backbone's)
    for row in pq.read_table(tmp_path / "trl.parquet").to_pylist()[:10]:
        tok = prm.PRMTrainer.tokenize_row(row, tokenizer, "\n", None, None, False, False)
        labelled = [x for x in tok["labels"] if x != -100]
        assert labelled == [int(b) for b in row["labels"]]  # one label per kept step, at its last token
        assert len(tok["input_ids"]) == len(tok["labels"])
