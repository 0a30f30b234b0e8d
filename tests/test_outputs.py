"""Output directories misused: one line and exit 2, nothing deleted through a link, nothing created by a
failed job, staging directories of killed runs cleaned by the next run; hostile files for `inspect`."""

import json
import os
import re
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import good_row

from actprm.cli import main
from actprm.io.writers import StagedOutput, replaced_dir, staging_name


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(good_row(i)) + "\n" for i in range(4)))
    return path


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("actprm: error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_output_on_a_virtual_filesystem(corpus, capsys):
    assert main(["validate", "--input", str(corpus), "--output", "/proc/actprm-test-x"]) == 2
    one_line_error(capsys, "/proc/actprm-test-x")


def test_output_below_a_file(tmp_path, corpus, capsys):
    (tmp_path / "good.parquet").write_bytes(b"x")
    assert main(["validate", "--input", str(corpus), "--output", str(tmp_path / "good.parquet" / "sub")]) == 2
    one_line_error(capsys, "good.parquet is not a directory")
    assert main(["validate", "--input", str(corpus), "--output", str(tmp_path / "good.parquet")]) == 2
    one_line_error(capsys, "exists and is not a directory")


def test_overwrite_never_deletes_through_a_symlink(tmp_path, corpus, capsys):
    out = tmp_path / "out"
    assert main(["validate", "--input", str(corpus), "--output", str(out)]) == 0
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.parquet").write_bytes(b"mine")
    os.rename(out / "valid", tmp_path / "old-valid")
    (out / "valid").symlink_to(precious, target_is_directory=True)
    capsys.readouterr()
    assert main(["validate", "--input", str(corpus), "--output", str(out), "--overwrite"]) == 2
    one_line_error(capsys, "symbolic link")
    assert (precious / "keep.parquet").read_bytes() == b"mine" and (out / "valid").is_symlink()
    assert not list(out.glob(".staging-*"))  # refused before anything was staged


@pytest.mark.parametrize("verb", ["validate", "score", "annotate"])
def test_overwrite_into_a_linked_output_directory_deletes_nothing(tmp_path, corpus, capsys, verb):
    """--output is a link to a directory of earlier tables (the user's files among them): --overwrite would
    have replaced the tables through the link; it is refused, and writing new tables into a linked directory
    that holds none of them is fine."""
    target = tmp_path / "target"
    args = {"validate": [], "score": [], "annotate": ["--backend", "verifier"]}[verb]
    assert main([verb, "--input", str(corpus), "--output", str(target), *args]) == 0
    tables = sorted(p.name for p in target.iterdir() if p.is_dir())
    assert tables
    (target / tables[0] / "mine.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    capsys.readouterr()
    assert main([verb, "--input", str(corpus), "--output", str(link), "--overwrite", *args]) == 2
    one_line_error(capsys, "symbolic link")
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
    assert (target / tables[0] / "mine.txt").read_text() == "keep"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (tmp_path / "link2").symlink_to(fresh, target_is_directory=True)
    assert main([verb, "--input", str(corpus), "--output", str(tmp_path / "link2"), *args]) == 0


def test_replaced_dir_refuses_a_link(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "f").write_text("keep")
    (tmp_path / "link").symlink_to(target, target_is_directory=True)
    with pytest.raises(Exception, match="symbolic link"), replaced_dir(tmp_path / "link") as staging:
        (staging / "x").write_text("new")
    assert (target / "f").read_text() == "keep"


def test_failed_job_creates_nothing(tmp_path, capsys):
    out = tmp_path / "deep" / "out"
    assert main(["validate", "--input", str(tmp_path / "missing.jsonl"), "--output", str(out)]) == 2
    assert not (tmp_path / "deep").exists()
    staged = StagedOutput(out, ["valid"])  # construction checks only
    assert not (tmp_path / "deep").exists()
    staged.abort()
    assert not (tmp_path / "deep").exists()
    # a job that fails after it started writing leaves no output directory it made (one that was there stays)
    with pytest.raises(RuntimeError):
        with StagedOutput(out, ["valid"]) as staged:
            staged.path("valid").mkdir()
            raise RuntimeError("the job failed midway")
    assert (tmp_path / "deep").is_dir() and not out.exists()
    out.mkdir()
    with pytest.raises(RuntimeError):
        with StagedOutput(out, ["valid"]) as staged:
            staged.path("valid").mkdir()
            raise RuntimeError("the job failed midway")
    assert out.is_dir() and list(out.iterdir()) == []


def test_staging_of_killed_runs_is_cleaned_by_the_next_run(tmp_path, corpus):
    out = tmp_path / "out"
    out.mkdir()
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]
    dead_pid = 2**22 + 12345  # above any pid this machine hands out
    stale = [out / ".staging-0badc0de", out / f".staging-{host}-{dead_pid}-0badc0de"]
    live = [out / f".staging-{host}-1-0badc0de",  # pid 1 is alive
            out / f".staging-otherhost-{dead_pid}-0badc0de"]  # another host's: cannot tell, kept
    for d in stale + live:
        (d / "valid").mkdir(parents=True)
    assert main(["validate", "--input", str(corpus), "--output", str(out)]) == 0
    assert [d.exists() for d in stale] == [False, False] and [d.exists() for d in live] == [True, True]
    assert re.fullmatch(rf"\.staging-{host}-{os.getpid()}-[0-9a-f]{{8}}", staging_name(".staging-"))


def test_train_output_staging_of_killed_runs_is_cleaned(tmp_path):
    stale = tmp_path / ".model.staging-0badc0de"
    stale.mkdir()
    with replaced_dir(tmp_path / "model") as staging:
        (staging / "x").write_text("1")
    assert not stale.exists() and (tmp_path / "model" / "x").read_text() == "1"


# ------------------------------------------------------------------------------- inspect


@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "not JSON"),
    (b"[1, 2, 3]", "a JSON list, not an object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
    (b"\xff\xfe", "not JSON"),
])
def test_inspect_with_hostile_metadata_is_one_line(tmp_path, capsys, raw, reason):
    table = pa.Table.from_pylist([good_row(0)]).replace_schema_metadata({b"actprm": raw})
    pq.write_table(table, tmp_path / "t.parquet")
    assert main(["inspect", str(tmp_path / "t.parquet")]) == 2
    one_line_error(capsys, "'actprm' metadata is not a provenance record", reason)


def test_shard_writer_streams_row_groups_and_cuts_shards(tmp_path):
    """The writer holds at most one row group (the driver's memory at 1M rows), cuts shards at rows_per_shard,
    writes the canonical schema, and leaves no temporary file; a failed job leaves no half shard."""
    from actprm.io.writers import ShardWriter
    from actprm.schemas import arrow_schema

    rows = [{"id": f"r{i}", "problem": "p", "steps": ["a", "b"]} for i in range(25)]
    with ShardWriter(tmp_path / "t", "trajectories", rows_per_shard=10, row_group_rows=4) as w:
        for k in range(0, 25, 3):
            w.add_rows(rows[k:k + 3])
            assert w._buffered < 4  # full row groups went to disk at once
    files = sorted((tmp_path / "t").iterdir())
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    tables = [pq.ParquetFile(f) for f in files]
    assert [t.metadata.num_rows for t in tables] == [10, 10, 5]
    assert all(t.metadata.row_group(g).num_rows <= 4 for t in tables for g in range(t.num_row_groups))
    assert all(t.schema_arrow.remove_metadata() == arrow_schema("trajectories") for t in tables)
    assert all(b"actprm" in (t.schema_arrow.metadata or {}) for t in tables)
    assert [r["id"] for f in files for r in pq.read_table(f).to_pylist()] == [r["id"] for r in rows]
    with ShardWriter(tmp_path / "empty", "trajectories") as w:
        pass
    assert pq.read_table(tmp_path / "empty" / "part-00000.parquet").num_rows == 0
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "failed", "trajectories", row_group_rows=2) as w:
        w.add_rows(rows[:5])
        raise RuntimeError("killed")
    assert list((tmp_path / "failed").iterdir()) == []


HOLD = ("import sys, time; from actprm.io.lock import output_lock; "
        "output_lock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)")


@pytest.mark.parametrize("verb", ["validate", "score", "annotate", "generate", "init-model", "evaluate", "export"])
def test_every_verb_refuses_an_output_another_run_holds(tmp_path, corpus, capsys, verb):
    """A run holds its output (an `annotate` into it, say); any other verb writing there exits 2 naming the
    holder and touches nothing (validate --overwrite used to delete what the running annotate wrote)."""
    import subprocess
    import sys

    out = tmp_path / ("out.jsonl" if verb == "export" else "out")
    if verb != "export":
        out.mkdir()
        (out / "theirs.txt").write_text("the running job's")
    args = {"validate": ["--input", str(corpus)], "score": ["--input", str(corpus)],
            "annotate": ["--input", str(corpus), "--backend", "verifier"],
            "generate": ["--n", "5"], "init-model": ["--preset", "tiny", "--n-heads", "2"],
            "evaluate": ["--data", str(corpus)], "export": ["--input", str(corpus), "--format", "trl"]}[verb]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        assert main([verb, *args, "--output", str(out), "--overwrite", "--no-progress"]) == 2
        one_line_error(capsys, "in use by another actprm run", f"pid {holder.pid}")
        assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else []) == before
        assert not out.is_file()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("size", [300, 230])
@pytest.mark.parametrize("verb", ["validate", "score", "annotate", "init-model"])
def test_an_output_name_too_long_for_the_filesystem_is_one_line(tmp_path, corpus, capsys, verb, size):
    """Over 255 bytes the system refuses the name; from 192 the staging and lock names made beside it."""
    out = tmp_path / ("é" * (size // 2))
    args = ["--input", str(corpus)] if verb != "init-model" else []
    assert main([verb, *args, "--output", str(out)]) == 2
    one_line_error(capsys, f"a name of {size} bytes")
    assert os.listdir(tmp_path) == ["in.jsonl"]


def test_annotate_into_a_read_only_place_is_one_line(tmp_path, corpus, capsys):
    """/sys refuses new directories even to root: the judge's cache in the output, or --cache there."""
    judge = ["annotate", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--judge-model", "m",
             "--input", str(corpus)]
    assert main([*judge, "--output", "/sys/actprm-test-x"]) == 2
    one_line_error(capsys, "judge cache /sys/actprm-test-x/judge_cache.sqlite: cannot be written there")
    assert main([*judge, "--output", str(tmp_path / "o"), "--cache", "/sys/actprm-test-x/c.sqlite"]) == 2
    one_line_error(capsys, "cannot be written there")
    assert not (tmp_path / "o").exists()


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("verb", ["validate", "score", "generate", "annotate", "init-model"])
def test_a_full_disk_is_one_line_and_commits_nothing(tmp_path, corpus, capsys, monkeypatch, verb):
    """Writes fail with ENOSPC (simulated): one line, exit 2, no output and no staging left behind."""
    import actprm.model

    monkeypatch.setattr(pq.ParquetWriter, "write_table", _disk_full)
    monkeypatch.setattr(actprm.model, "save_file", _disk_full)
    out = tmp_path / "out"
    args = {"validate": ["--input", str(corpus)], "score": ["--input", str(corpus)], "annotate": ["--input", str(corpus)],
            "generate": ["--n", "20"], "init-model": []}[verb]
    assert main([verb, *args, "--output", str(out)]) == 2
    one_line_error(capsys, "no space left on the device")
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]


def test_a_full_disk_under_the_judge_cache_is_one_line(tmp_path, corpus, capsys, monkeypatch):
    import sqlite3

    from actprm.judge.cache import AnswerCache
    from actprm.testing.judge_server import FakeJudge, JudgeServer

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(AnswerCache, "put", full)
    with JudgeServer(FakeJudge()) as server:
        code = main(["annotate", "--backend", "openai", "--base-url", server.url, "--judge-model", "m",
                     "--input", str(corpus), "--output", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    one_line_error(capsys, "no space left on the device")
    assert not (tmp_path / "o" / "annotations").exists()
