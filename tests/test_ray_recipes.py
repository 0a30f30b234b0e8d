"""The Ray recipes give the same rows as the in-process jobs (a local Ray on this machine)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from conftest import good_row  # noqa: E402

from actprm.config import ValidateConfig  # noqa: E402
from pipelines.validate import run as run_validate  # noqa: E402


def rows(directory, key):
    table = pa.concat_tables([pq.read_table(f) for f in sorted(directory.glob("*.parquet"))])
    return sorted(table.to_pylist(), key=key)


def test_validate_recipe_matches_in_process(tmp_path, write_jsonl, local_ray):
    from pipelines import validate as recipe

    write_jsonl("a.jsonl", [good_row(1), good_row(2), good_row(1), {"id": "x", "problem": "p", "steps": []}])
    pq.write_table(pa.Table.from_pylist([good_row(2), good_row(5)]), tmp_path / "b.parquet")
    write_jsonl("c.jsonl", [good_row(5), good_row(6)], raw_lines=["{oops"])
    inputs = [str(p) for p in sorted(tmp_path.glob("*.*"))]
    local = run_validate(ValidateConfig(input=inputs, output=str(tmp_path / "local")), progress=False)
    remote = recipe.run_on_ray(ValidateConfig(input=inputs, output=str(tmp_path / "ray")), progress=False)
    assert local.counts == remote.counts
    key = lambda r: r["id"]  # noqa: E731
    assert rows(tmp_path / "local" / "valid", key) == rows(tmp_path / "ray" / "valid", key)
    ekey = lambda r: (r["source_file"], r["row_index"])  # noqa: E731
    local_errors = rows(tmp_path / "local" / "errors", ekey)
    assert local_errors == rows(tmp_path / "ray" / "errors", ekey)
    assert [e["reason"].split(":")[0] for e in local_errors] == [
        "duplicate id", "empty steps", "duplicate id", "duplicate id", "invalid JSON"]
