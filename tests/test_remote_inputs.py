"""Inputs on a remote filesystem (actprm.io.filesystems): an S3 bucket served by moto on 127.0.0.1,
read through pyarrow's S3 filesystem exactly as a real bucket would be. Listing (directory, glob,
file), reading every format, a bad file named in one line, and `actprm filter` on Ray, whose read
tasks resolve the URIs in Ray workers, giving the same rows as the same files read locally."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.errors import UserError
from actprm.io.readers import iter_batches, list_files, open_corpus
from actprm.world.arith import Generator

moto_server = pytest.importorskip("moto.server")

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_EC2_METADATA_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 with bucket `corpus` holding 2 Parquet shards, a gzipped JSONL file and a broken file
    under `bad/`; returns (query string for URIs, local copy of the good files)."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)  # before any Ray starts: its workers inherit the environment
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", endpoint_override=f"127.0.0.1:{port}",
                           scheme="http", region="us-east-1", allow_bucket_creation=True)
    fs.create_dir("corpus")
    local = tmp_path_factory.mktemp("local")
    rows = list(Generator(seed=5).rows(0, 90))
    pq.write_table(pa.Table.from_pylist(rows[:30]), local / "part-000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[30:60]), local / "part-001.parquet")
    with gzip.open(local / "extra.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[60:])
    for path in sorted(local.iterdir()):
        with fs.open_output_stream(f"corpus/data/{path.name}") as out:
            out.write(path.read_bytes())
    with fs.open_output_stream("corpus/bad/broken.parquet") as out:
        out.write(b"PAR1 not a parquet file")
    yield f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", local
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def read_all(inputs: list[str]) -> dict[str, dict]:
    return {r["id"]: r for batch in iter_batches(open_corpus(inputs)) for r in batch.valid}


def test_listing_a_bucket_like_a_directory(s3):
    q, _ = s3
    names = [Path(str(u).split("?")[0]).name for u in list_files([f"s3://corpus/data/{q}"])]
    assert names == ["extra.jsonl.gz", "part-000.parquet", "part-001.parquet"]
    assert [Path(str(u).split("?")[0]).name for u in list_files([f"s3://corpus/data/part-*.parquet{q}"])] == [
        "part-000.parquet", "part-001.parquet"]
    assert [Path(str(u).split("?")[0]).name for u in list_files([f"s3://corpus/**/*.jsonl.gz{q}"])] == ["extra.jsonl.gz"]
    every = list_files([f"s3://corpus/data/{q}"])
    assert all(str(u).endswith(q) for u in every)  # the URI options stay on every file
    with pytest.raises(UserError, match="no such file or directory"):
        list_files([f"s3://corpus/nothing/{q}"])
    with pytest.raises(UserError, match="no file matches"):
        list_files([f"s3://corpus/data/*.csv{q}"])
    for secret in (f"s3://testing:testing@corpus/data/{q}", f"s3://corpus/data/{q}&secret_key=testing"):
        with pytest.raises(UserError, match="credentials in a location") as info:
            list_files([secret])
        assert "testing" not in str(info.value)


def test_remote_rows_equal_the_same_files_read_locally(s3):
    q, local = s3
    remote = read_all([f"s3://corpus/data/{q}"])
    assert len(remote) == 90
    assert remote == read_all([str(local)])


def test_a_broken_remote_file_is_one_line_naming_it(s3, tmp_path, capsys):
    q, _ = s3
    with pytest.raises(UserError, match=r"broken\.parquet\?endpoint_override=.*: cannot be read as Parquet"):
        open_corpus([f"s3://corpus/bad/broken.parquet{q}"])
    assert main(["validate", "--input", f"s3://corpus/bad/{q}", "--output", str(tmp_path / "v")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.parquet" in err[0]


def test_filter_on_ray_reads_the_bucket_like_local_files(s3, tmp_path, local_ray):
    q, local = s3
    for name, source in (("remote", f"s3://corpus/data/{q}"), ("local", str(local))):
        assert main(["filter", "--input", source, "--output", str(tmp_path / name), "--no-progress",
                     "--actors", "1", "--batch-rows", "40"]) == 0
    remote = {r["id"]: r for r in pq.read_table(tmp_path / "remote" / "scored").to_pylist()}
    here = {r["id"]: r for r in pq.read_table(tmp_path / "local" / "scored").to_pylist()}
    assert len(remote) == 90 and remote.keys() == here.keys()
    for i, r in remote.items():  # batches may be composed differently: float noise only
        assert len(r["step_mean"]) == len(here[i]["step_mean"])
        assert np.max(np.abs(np.array(r["step_mean"]) - here[i]["step_mean"])) <= 1e-5
    summary = json.loads((tmp_path / "remote" / "summary.json").read_text())
    assert all(f.startswith("s3://corpus/data/") for f in summary["files"])
    assert "testing" not in (tmp_path / "remote" / "summary.json").read_text()  # no credential in outputs
