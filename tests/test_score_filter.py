"""The corpus-scale filter (pipelines/filter.py) on a local Ray: same scores as in-process
`actprm score`, corpus-wide rules, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.errors import UserError
from actprm.world.arith import Generator

REPO = Path(__file__).resolve().parents[1]



def write_shards(directory: Path, rows: list[dict], per_file: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(0, len(rows), per_file):
        path = directory / f"part-{k // per_file:03d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[k:k + per_file]), path)
        paths.append(path)
    return paths


def read_table(directory: Path) -> list[dict]:
    return pq.read_table(directory).to_pylist()


def test_filter_scores_like_in_process_score_and_applies_the_corpus_rules(tmp_path, local_ray, capsys, monkeypatch):
    from pipelines import filter as score_filter

    # blocks smaller than a file, as a 50k-row file is against the default 4 MiB: a file's rows reach the
    # driver in several blocks (so several actors can score one file), each row still exactly once
    monkeypatch.setattr(score_filter, "BLOCK_BYTES", 64 * 1024)
    blocks = {}
    add = score_filter.FileOutput.add
    monkeypatch.setattr(score_filter.FileOutput, "add",
                        lambda self, table: (blocks.__setitem__(self.file_index, blocks.get(self.file_index, 0) + 1),
                                             add(self, table)))
    rows = list(Generator(seed=3).rows(0, 1200))
    rows[1000] = dict(rows[1000], id=rows[10]["id"])          # a duplicate id in a later file
    rows[500] = dict(rows[500], steps=[])                      # an invalid row
    corpus = tmp_path / "corpus"
    write_shards(corpus, rows, 300)
    (corpus / "part-999.parquet").write_bytes(b"PAR1 this is not a parquet file")
    # float32: compared to 1e-5 across different batchings, which bf16 (dtype auto on an AVX512-BF16 CPU) is not
    fp32 = tmp_path / "fp32.yaml"
    fp32.write_text("dtype: float32\n")
    assert main(["score", "--input", str(corpus / "part-00*.parquet"), "--output", str(tmp_path / "s"), "--threads", "1",
                 "--no-progress", "--config", str(fp32)]) == 0
    assert main(["filter", "--input", str(corpus), "--output", str(tmp_path / "f"), "--no-progress",
                 "--actors", "2", "--batch-rows", "200", "--config", str(fp32)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("filter: 1200 rows read, 1198 scored") and "3 quarantined" in line
    assert len(blocks) == 4 and min(blocks.values()) >= 2, blocks

    expected = {r["id"]: r for r in read_table(tmp_path / "s" / "scored")}
    got = read_table(tmp_path / "f" / "scored")
    assert len(got) == len({r["id"] for r in got}) == len(expected) == 1198
    for r in got:
        e = expected[r["id"]]
        assert r["n_scored_steps"] == e["n_scored_steps"] and r["uncertain"] == e["uncertain"]
        assert np.max(np.abs(np.array(r["step_mean"]) - e["step_mean"])) <= 1e-5
        assert np.max(np.abs(np.array(r["step_std"]) - e["step_std"])) <= 1e-5
    selected = read_table(tmp_path / "f" / "selected")
    assert {r["id"] for r in selected} == {r["id"] for r in got if r["selected"]}
    errors = read_table(tmp_path / "f" / "errors")
    reasons = sorted(e["reason"].split(":")[0] for e in errors)
    assert reasons == ["duplicate id", "empty steps", "unreadable file"], reasons
    dup = next(e for e in errors if e["reason"].startswith("duplicate id"))
    assert dup["row_index"] == 100 and dup["source_file"].endswith("part-003.parquet")  # row 1000: file 3, row 100
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    assert summary["rows_read"] == 1200 and summary["unreadable_files"][0].endswith("part-999.parquet")

    # a rerun over the same output has nothing left to do
    assert main(["filter", "--input", str(corpus), "--output", str(tmp_path / "f"), "--no-progress"]) == 0
    assert "4 of 4 files done earlier" in capsys.readouterr().out
    assert len(read_table(tmp_path / "f" / "scored")) == 1198


def test_filter_empty_input_is_a_user_error_and_creates_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.jsonl").write_text("\n")
    for name in ("empty", "blank.jsonl"):
        assert main(["filter", "--input", str(tmp_path / name), "--output", str(tmp_path / "f"),
                     "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"no rows in {tmp_path / name}" in err and err.count("\n") == 1
        assert not (tmp_path / "f").exists()


def test_filter_user_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["filter", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "f")]) == 2
    assert main(["filter", "--input", str(tmp_path), "--output", str(tmp_path / "f"), "--model",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "Traceback" not in err


def test_a_killed_filter_resumes_with_every_id_exactly_once(tmp_path):
    rows = list(Generator(seed=4).rows(0, 1500))
    corpus = tmp_path / "corpus"
    write_shards(corpus, rows, 125)
    out = tmp_path / "f"
    cmd = [sys.executable, "-m", "pipelines.filter", "--input", str(corpus), "--output", str(out),
           "--no-progress", "--batch-rows", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def files_done() -> int:
        return len(list((out / "_progress").glob("*.json")))

    def start_and_wait_for(n: int) -> subprocess.Popen:
        job = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 180
        while time.time() < deadline and files_done() < n:
            time.sleep(0.2)
        return job

    # SIGTERM (what Slurm, Kubernetes and `timeout` send): stops as Ctrl-C does, one line, exit 130, no Ray dump
    job = start_and_wait_for(2)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130 and "actprm: interrupted" in err and "SIGTERM received" not in err, err[-2000:]
    # then killed outright
    job = start_and_wait_for(files_done() + 2)
    job.kill()
    job.wait()
    finished = files_done()
    assert 3 <= finished < 12, finished
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{finished} of 12 files done earlier" in done.stdout
    ids = [r["id"] for r in read_table(out / "scored")] + [r["id"] for r in read_table(out / "errors")]
    assert sorted(ids) == sorted(r["id"] for r in rows)  # every id exactly once



def test_default_sizing_gives_every_core_an_actor_and_keeps_a_cpu_for_reads(monkeypatch):
    from actprm.config import FilterConfig
    from pipelines import filter as score_filter

    def sizing(resources, **cfg):
        monkeypatch.setattr(score_filter.ray, "cluster_resources", lambda: resources)
        return score_filter.default_actors(FilterConfig(**cfg))

    share = score_filter.ACTOR_SHARE
    assert sizing({"CPU": 2.0}) == (2, share * 0.5, 0.0)      # 2 x under half a CPU: both cores score
    # ... and both actors fit beside two read tasks under what Ray Data schedules from (2 CPUs - a little)
    from pipelines.filter_reads import read_task_cpus
    assert 2 * share * 0.5 + 2 * read_task_cpus(share * 0.5) <= 1.9
    assert sizing({"CPU": 16.0}) == (16, share * 15 / 16, 0.0)
    assert sizing({"CPU": 1.0}) == (1, share * 0.5, 0.0)
    assert sizing({"CPU": 8.0}, actors=2) == (2, share * 3.5, 0.0)   # fewer actors: more threads each
    assert sizing({"CPU": 8.0}, cpus_per_actor=2) == (3, 2, 0.0)  # by hand: (CPUs - 1) / C actors
    assert sizing({"CPU": 16.0, "GPU": 4.0}) == (4, 1.0, 1.0)
    assert sizing({"CPU": 16.0, "GPU": 4.0}, device="cpu") == (16, share * 15 / 16, 0.0)


def test_the_local_ray_gets_a_small_object_store_and_a_cluster_refuses_the_flag(tmp_path, monkeypatch, capsys):
    from pipelines import ray_session

    started = []
    monkeypatch.setattr(ray_session.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_session.ray, "init", lambda **kw: started.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_session.init_ray(None, 256)
    assert started[-1]["object_store_memory"] == 256 * 2**20 and "address" not in started[-1]
    ray_session.init_ray(None)  # the other verbs: Ray's default store
    assert started[-1]["object_store_memory"] is None
    ray_session.init_ray("auto", 256)  # joining a cluster: the recipe's default is not the user's wish
    assert started[-1] == {"address": "auto", "log_to_driver": False}
    # asked for by the user with a cluster to join: one line, exit 2, before anything is read or written
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"problem": "1+1?", "steps": ["2"]}) + "\n")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert main(["filter", "--input", str(corpus), "--output", str(tmp_path / "out"), "--object-store-mb", "512",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--object-store-mb sizes the local Ray" in err
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setattr(ray_session.ray, "is_initialized", lambda: True)  # a Ray already up in this process
    with pytest.raises(UserError, match="object-store-mb"):
        ray_session.init_ray(None, 512, True)
