"""Verbs chain: the output directory of a verb is accepted as the input of the next."""

import json

import pyarrow.parquet as pq
import pytest
from conftest import good_row

from actprm.cli import main
from actprm.io.readers import list_files, verb_output_part


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    assert main(["generate", "--n", "40", "--output", str(root / "gen"), "--no-progress"]) == 0
    return root


def test_validate_annotate_train_score_chain_through_output_directories(world, tmp_path, capsys):
    gen, v, ann, model, scored = (world / "gen", tmp_path / "v", tmp_path / "ann", tmp_path / "m", tmp_path / "s")
    assert main(["validate", "--input", str(gen), "--output", str(v)]) == 0
    assert main(["annotate", "--input", str(v), "--output", str(ann), "--no-progress"]) == 0
    assert (ann / "errors").is_dir()  # which train must not read as annotations
    capsys.readouterr()
    assert main(["train", "--trajectories", str(v), "--annotations", str(ann), "--output", str(model),
                 "--backbone", "frozen", "--epochs", "1", "--no-progress"]) == 0
    assert "40 labelled trajectories" in capsys.readouterr().out
    assert main(["score", "--input", str(v), "--model", str(model), "--output", str(scored), "--no-progress"]) == 0
    assert pq.read_table(scored / "scored").num_rows == 40
    # score's output is read as its scored table (the trajectories with their scores)
    assert main(["validate", "--input", str(scored), "--output", str(tmp_path / "v2")]) == 0
    assert pq.read_table(tmp_path / "v2" / "valid").num_rows == 40


def test_which_table_a_verb_output_directory_stands_for(tmp_path):
    def make(name, parts):
        d = tmp_path / name
        for part in parts:
            if "." in part:
                (d / part).parent.mkdir(parents=True, exist_ok=True)
                (d / part).write_text("{}")
            else:
                (d / part).mkdir(parents=True)
                (d / part / "part-00000.parquet").write_bytes(b"x")
        return d

    assert verb_output_part(make("val", ["valid", "errors", "summary.json"])).name == "valid"
    assert verb_output_part(make("ann", ["annotations", "errors", "summary.json", "judge_cache.sqlite",
                                         "judge_cache.sqlite-wal", "segments/0.sqlite"])).name == "annotations"
    assert verb_output_part(make("flt", ["scored", "selected", "errors", "summary.json"])).name == "selected"
    assert verb_output_part(make("sc", ["scored", "errors", "summary.json", "selection.png"])).name == "scored"
    mine = make("mine", ["valid", "more"])  # a user's own folder: read as it is, every data file
    assert verb_output_part(mine) == mine
    assert len(list_files([mine])) == 2
    loose = make("loose", ["valid", "extra.jsonl"])
    assert verb_output_part(loose) == loose
    assert [p.parent.name for p in list_files([tmp_path / "ann"])] == ["annotations"]
    only_errors = make("bad", ["errors", "summary.json"])
    assert verb_output_part(only_errors) == only_errors  # no table to stand for: read as it is


def test_an_explicit_subdirectory_is_still_read_as_given(tmp_path):
    d = tmp_path / "v"
    assert main(["validate", "--input", str(_rows(tmp_path)), "--output", str(d)]) == 0
    assert [p.parent.name for p in list_files([d / "errors"])] == ["errors"]


def _rows(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(3)))
    return path


def test_annotate_with_a_judge_then_train_reads_only_the_annotations(served, tmp_path, capsys, monkeypatch):
    """The openai backend leaves its cache beside the tables (ann/judge_cache.sqlite): `ann` still chains."""
    monkeypatch.setenv("CHAIN_JUDGE_KEY", "k")
    _, _, server, data = served(n=30)
    ann = tmp_path / "ann"
    assert main(["annotate", "--backend", "openai", "--base-url", server.url, "--judge-model", "fake-judge",
                 "--api-key-env", "CHAIN_JUDGE_KEY", "--input", str(data), "--output", str(ann),
                 "--no-progress"]) == 0
    assert (ann / "judge_cache.sqlite").is_file() and (ann / "errors").is_dir()
    capsys.readouterr()
    assert main(["train", "--trajectories", str(data), "--annotations", str(ann), "--output", str(tmp_path / "m"),
                 "--backbone", "frozen", "--epochs", "1", "--no-progress"]) == 0
    assert "30 labelled trajectories" in capsys.readouterr().out
