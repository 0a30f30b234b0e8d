"""`actprm init-model` + `actprm score`: outputs, schema, selection, errors, summary."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm import uncertainty
from actprm.cli import main
from actprm.schemas import arrow_schema
from conftest import good_row


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["init-model", "--preset", "tiny", "--n-heads", "4", "--output", str(out)]) == 0
    return out


def read(directory):
    files = sorted(directory.glob("*.parquet"))
    for f in files:
        assert pq.read_schema(f).remove_metadata() == arrow_schema(
            "scored" if directory.name == "scored" else "errors")
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def test_score_writes_every_row_once_with_consistent_columns(tmp_path, write_jsonl, tiny_model, capsys):
    rows = [good_row(i) for i in range(12)] + [{"id": "bad", "problem": "p", "steps": []}]
    rows.append(good_row(99, steps=["x " * 3000]))  # first step alone over --max-length
    path = write_jsonl("in.jsonl", rows)
    out = tmp_path / "scored"
    rc = main(["score", "--input", str(path), "--output", str(out), "--model", str(tiny_model),
               "--max-length", "512", "--batch-tokens", "2048", "--delta-std", "0.5", "--delta-pred", "0.6"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("score: 14 rows in, 12 scored,") and "2 quarantined" in line
    scored = read(out / "scored")
    errors = read(out / "errors")
    assert sorted(r["id"] for r in scored) == sorted(f"t{i}" for i in range(12))
    assert sorted((e["id"], e["reason"].split(":")[0]) for e in errors) == [("bad", "empty steps"),
                                                                           ("t99", "too long")]
    assert [e["row_index"] for e in errors if e["id"] == "t99"] == [13]
    for r in scored:
        assert r["n_scored_steps"] == len(r["steps"]) == len(r["step_mean"]) == len(r["step_std"])
        mean, std = r["step_mean"], r["step_std"]
        assert r["pred_first_error"] == uncertainty.predicted_first_error(mean)
        import numpy as np
        assert r["uncertain"] == uncertainty.is_uncertain(np.array(mean), np.array(std), 0.6, 0.5)
        assert r["selected"] == r["uncertain"]
        assert r["prm_model"] == str(tiny_model)
    assert (out / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_scored"] == 12 and summary["scoring"]["n_forward"] >= 1


def test_budget_selection_is_the_corpus_wide_top_k(tmp_path, write_jsonl, tiny_model):
    path = write_jsonl("in.jsonl", [good_row(i, problem=f"Problem {i} " * (i + 1)) for i in range(15)])
    out = tmp_path / "s"
    assert main(["score", "--input", str(path), "--output", str(out), "--model", str(tiny_model),
                 "--selection", "budget", "--budget", "4", "--acquisition", "bald", "--batch-rows", "4",
                 "--rows-per-shard", "5"]) == 0
    scored = read(out / "scored")
    assert len(list((out / "scored").glob("*.parquet"))) == 3
    top = sorted(scored, key=lambda r: (-r["acquisition"], r["id"]))[:4]
    assert {r["id"] for r in scored if r["selected"]} == {r["id"] for r in top}


def test_score_user_errors(tmp_path, write_jsonl, capsys):
    path = write_jsonl("in.jsonl", [good_row(0)])
    assert main(["score", "--input", str(path), "--output", str(tmp_path / "o"), "--model", str(tmp_path)]) == 2
    assert "not a PRM directory" in capsys.readouterr().err
    assert main(["score", "--input", str(path), "--output", str(tmp_path / "o"), "--model", str(tmp_path),
                 "--selection", "budget"]) == 2
    assert "--budget" in capsys.readouterr().err
    # no --model: the shipped default PRM (tests/test_shipped_models.py checks its scores)
    assert main(["score", "--input", str(path), "--output", str(tmp_path / "o"), "--no-progress"]) == 0


def test_a_model_dir_without_safetensors_weights_is_a_user_error(tmp_path, write_jsonl, tiny_model, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").unlink()
    path = write_jsonl("in.jsonl", [good_row(0)])
    assert main(["score", "--input", str(path), "--output", str(tmp_path / "o"), "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actprm: error: {broken}: cannot load the PRM") and err.count("\n") == 1


def test_init_model_overwrite_leaves_only_what_it_wrote(tmp_path, capsys):
    """Overwriting a trained checkpoint: its optimizer state, anchor and trainer state go with it, so the next
    `train` starts a first round, not round N + 1 with another model's moments."""
    out = tmp_path / "m"
    assert main(["init-model", "--preset", "tiny", "--n-heads", "4", "--output", str(out)]) == 0
    wrote = sorted(p.name for p in out.iterdir())
    for stale in ("optimizer.safetensors", "heads_init.safetensors", "trainer_state.json", "notes.txt"):
        (out / stale).write_text("from a training round")
    assert main(["init-model", "--preset", "tiny", "--n-heads", "2", "--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == wrote
    assert json.loads((out / "prm_config.json").read_text())["n_heads"] == 2
