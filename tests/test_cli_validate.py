"""`actprm validate`: outputs, canonical schemas, one-line errors with exit code 2, config precedence."""

import gzip
import json
import subprocess
import sys

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.schemas import arrow_schema
from conftest import REPO, good_row


def shards(directory):
    files = sorted(directory.glob("*.parquet"))
    assert files, f"no shards in {directory}"
    return files


def assert_canonical(directory, table):
    for f in shards(directory):
        assert pq.read_schema(f).remove_metadata() == arrow_schema(table), f


def read_dir(directory):
    return pa.concat_tables([pq.read_table(f) for f in shards(directory)]).to_pylist()


def test_validate_writes_valid_errors_summary_with_canonical_schemas(tmp_path, write_jsonl, capsys):
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame([good_row(i) for i in range(5)]).write_parquet(src / "a.parquet")  # large types
    (src / "b.jsonl").write_text("\n".join(json.dumps(r) for r in [good_row(9), {"id": "bad", "problem": "p",
                                                                                 "steps": []}]) + "\n")
    out = tmp_path / "out"
    rc = main(["validate", "--input", str(src), "--output", str(out), "--rows-per-shard", "2"])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and "7 rows read" in line[0] and "6 valid" in line[0] and "empty steps 1" in line[0]
    assert_canonical(out / "valid", "trajectories")
    assert_canonical(out / "errors", "errors")
    assert len(shards(out / "valid")) == 3
    assert sorted(r["id"] for r in read_dir(out / "valid")) == ["t0", "t1", "t2", "t3", "t4", "t9"]
    assert [r["id"] for r in read_dir(out / "errors")] == ["bad"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == 7 and summary["rows_error"] == 1 and summary["errors_by_kind"] == {"empty steps": 1}
    assert not list(out.glob(".staging-*"))


def test_no_errors_still_writes_an_empty_errors_table(tmp_path, write_jsonl):
    path = write_jsonl("ok.jsonl", [good_row(0)])
    assert main(["validate", "--input", str(path), "--output", str(tmp_path / "o")]) == 0
    assert_canonical(tmp_path / "o" / "errors", "errors")
    assert read_dir(tmp_path / "o" / "errors") == []


@pytest.mark.parametrize("content", ["", "  \n\n", "[]", "[ ]\n"])
def test_empty_input_is_a_user_error(tmp_path, capsys, content):
    (tmp_path / "empty.json").write_text(content)
    assert main(["validate", "--input", str(tmp_path / "empty.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"no rows in {tmp_path / 'empty.json'}" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_empty_directory_is_a_user_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert main(["validate", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]) == 2
    assert f"no rows in {tmp_path / 'in'}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    no_steps = tmp_path / "nosteps.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "problem": "p", "label": 0}]), no_steps)
    missing_col = tmp_path / "missing.jsonl"
    missing_col.write_text(json.dumps({"question": "q", "hard_labels": [1]}) + "\n")
    truncated = tmp_path / "trunc.json"
    truncated.write_text(json.dumps([good_row(0), good_row(1)])[:-30])
    notjson = tmp_path / "x.json"
    notjson.write_text("hello")
    badgz = tmp_path / "bad.jsonl.gz"
    payload = "".join(json.dumps(good_row(i)) + "\n" for i in range(20000)).encode()
    badgz.write_bytes(gzip.compress(payload)[:40000])  # the first rows read fine, then the stream breaks
    return {
        "missing path": ([str(tmp_path / "nope")], "no such file"),
        "corrupt parquet": ([str(corrupt)], "cannot be read as Parquet"),
        "unknown columns": ([str(no_steps)], "cannot tell the format"),
        "missing column": ([str(missing_col), "--format", "activeprm"], "missing required column 'steps'"),
        "truncated json": ([str(truncated)], "cannot be read as JSON"),
        "not json": ([str(notjson)], "not JSON"),
        "truncated gzip": ([str(badgz)], "cannot be read"),
    }


@pytest.mark.parametrize("case", ["missing path", "corrupt parquet", "unknown columns", "missing column",
                                  "truncated json", "not json", "truncated gzip"])
def test_bad_files_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, case):
    args, message = _bad_files(tmp_path)[case]
    out = tmp_path / "out"
    rc = main(["validate", "--input", *args, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("actprm: error: ") and message in err, err
    assert "Traceback" not in err
    assert not (out / "valid").exists()  # nothing half-written


def test_bad_file_exit_code_2_from_the_installed_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "actprm.cli", "validate", "--input", str(tmp_path / "nope"),
                           "--output", str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"actprm: error: {tmp_path / 'nope'}: no such file or directory"


def test_existing_output_needs_overwrite(tmp_path, write_jsonl, capsys):
    path = write_jsonl("ok.jsonl", [good_row(0)])
    out = str(tmp_path / "o")
    assert main(["validate", "--input", str(path), "--output", out]) == 0
    assert main(["validate", "--input", str(path), "--output", out]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["validate", "--input", str(path), "--output", out, "--overwrite"]) == 0


def test_flags_override_yaml_override_defaults(tmp_path, write_jsonl, capsys):
    path = write_jsonl("ok.jsonl", [good_row(0), good_row(1, problem="z" * 50)])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input: {path}\nmax_problem_chars: 10\noutput: {tmp_path / 'fromyaml'}\n")
    assert main(["validate", "--config", str(cfg)]) == 0
    assert "2 valid" not in capsys.readouterr().out  # YAML limit applied: both problems > 10 chars
    assert main(["validate", "--config", str(cfg), "--max-problem-chars", "30",
                 "--output", str(tmp_path / "fromflag")]) == 0
    assert "1 valid" in capsys.readouterr().out and (tmp_path / "fromflag" / "valid").exists()


@pytest.mark.parametrize("text,message", [("max_problem_chars: [1\n", "not valid YAML"),
                                          ("colour: blue\n", "unknown setting 'colour'"),
                                          ("max_problem_chars: -3\n", "max_problem_chars")])
def test_bad_config_is_a_user_error(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["validate", "--config", str(cfg), "--input", "x", "--output", "y"]) == 2
    assert message in capsys.readouterr().err


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    assert "examples:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "actprm validate --input" in capsys.readouterr().out


def test_recipe_runs_as_a_module_from_the_repo_root_and_the_console_script_exists(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.validate", "--help"], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--address" in proc.stdout
    script = __import__("shutil").which("actprm", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert script, "the actprm console script is not installed next to this Python"
    proc = subprocess.run([script, "init-model", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--preset" in proc.stdout


LAUGHS = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]" for i in range(8)]
                   + ["extra_body: {x: *i}"]) + "\n"


def test_a_yaml_bomb_is_refused_before_its_values_are_used(tmp_path, capsys):
    """Under 1 KB of nested aliases ("billion laughs") expands to 10^9 values once used (8 GB and a kill
    in `annotate`'s extra_body); the config is one line, exit 2, in no time and no memory."""
    import resource
    import time

    cfg = tmp_path / "c.yaml"
    cfg.write_text(LAUGHS)
    assert cfg.stat().st_size < 1024
    before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    assert main(["annotate", "--config", str(cfg), "--input", "x", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "expands to more than" in err and err.count("\n") == 1
    assert time.perf_counter() - start < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no expansion
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    assert main(["validate", "--config", str(big), "--input", "x", "--output", str(tmp_path / "p")]) == 2
    assert "at most" in capsys.readouterr().err


@pytest.mark.parametrize("value, expect", [("1e32", "'1e32' is not an integer"), ("1.0e+32", "is far too large"),
                                           ("2000000", "less than or equal to 1000000"),
                                           ("1.5", "fractional part")])
def test_batch_rows_must_be_a_sensible_integer(tmp_path, capsys, value, expect):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"batch_rows: {value}\n")
    assert main(["validate", "--config", str(cfg), "--input", "x", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"batch_rows: " in err and expect in err and err.count("\n") == 1, err
