"""Hostile and careless inputs: a bad row is one error row and its file's other rows go on; a bad file is
one line and exit 2; memory stays bounded by the limits, whatever the nesting."""

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, good_row

from actprm.cli import main
from actprm.errors import UserError
from actprm.io.readers import iter_batches, iter_json_array, open_corpus
from actprm.schemas import Limits, check_trajectory


def read_all(inputs, **kw):
    valid, errors = [], []
    for batch in iter_batches(open_corpus(inputs), **kw):
        valid += batch.valid
        errors += batch.errors
    return valid, errors


def reasons(errors):
    return {(e["row_index"], e["reason"].split(":")[0]) for e in errors}


def jsonl_bytes(rows):
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


# ----------------------------------------------------------------- one bad row, the others go on


def test_invalid_utf8_line_is_one_error_row(tmp_path):
    lines = [json.dumps(good_row(i)).encode() for i in range(26)]
    lines[7] = lines[7].replace(b"What", b"Wh\xff\xfet")
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    valid, errors = read_all([tmp_path / "in.jsonl"])
    assert len(valid) == 25 and reasons(errors) == {(7, "invalid UTF-8")}
    assert "Wh\ufffd\ufffdt" in errors[0]["row_json"]  # shown, with the bad bytes replaced


def test_invalid_utf8_line_through_validate(tmp_path, capsys):
    lines = [json.dumps(good_row(i)).encode() for i in range(5)]
    lines[2] = b'{"id": "x", "problem": "\xc3\x28", "steps": ["a"]}'
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    assert main(["validate", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o")]) == 0
    assert "4 valid, 1 errors" in capsys.readouterr().out
    errors = pq.read_table(tmp_path / "o" / "errors").to_pylist()
    assert [(e["row_index"], e["reason"].split(":")[0]) for e in errors] == [(2, "invalid UTF-8")]


@pytest.mark.parametrize("kind", ["jsonl", "json"])
@pytest.mark.parametrize("depth", [100, 100_000, 200_000])
def test_deep_rows_are_error_rows_not_recursion_errors(tmp_path, kind, depth):
    deep = '{"id": "deep", "problem": "p", "steps": ["a"], "x": ' + "[" * depth + "]" * depth + "}"
    rows = [json.dumps(good_row(0)), deep, json.dumps(good_row(1))]
    path = tmp_path / f"in.{kind}"
    path.write_text("\n".join(rows) + "\n" if kind == "jsonl" else "[" + ",".join(rows) + "]")
    valid, errors = read_all([path])
    assert [r["id"] for r in valid] == ["t0", "t1"]
    assert reasons(errors) == {(1, "too deep")}


def test_an_array_row_nesting_200k_brackets_stays_small_in_memory(tmp_path):
    """The case that took 23.6 GB: validate in a fresh process, its peak RSS measured."""
    path = tmp_path / "deep.json"
    path.write_text("[" + json.dumps(good_row(0)) + ',{"id":"d","problem":"p","steps":["a"],"x":'
                    + "[" * 200_000 + "]" * 200_000 + "}," + json.dumps(good_row(1)) + "]")
    rc, peak_mb = peak_mb_of_validate(path, tmp_path / "o")
    assert rc == 0
    assert peak_mb < 1024, f"peak RSS {peak_mb:.0f} MB"
    errors = pq.read_table(tmp_path / "o" / "errors").to_pylist()
    assert [(e["row_index"], e["reason"].split(":")[0]) for e in errors] == [(1, "too deep")]
    assert pq.read_table(tmp_path / "o" / "valid").num_rows == 2


def peak_mb_of_validate(path, out) -> tuple[int, float]:
    """validate in a fresh process: (exit code, its peak RSS in MB)."""
    # VmHWM, the peak of this process' own memory map: ru_maxrss would carry over the forking parent's size
    code = ("import re, sys; from actprm.cli import main; "
            f"rc = main(['validate', '--input', {str(path)!r}, '--output', {str(out)!r}]); "
            "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    return proc.returncode, int(proc.stdout.strip().splitlines()[-1]) / 1024


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl.gz"])
def test_a_small_file_holding_a_gigabyte_of_repeated_text_stays_small_in_memory(tmp_path, suffix):
    """1,024 rows sharing one 1 MiB problem: 3 KB as Parquet (one dictionary value), 1 MB gzipped JSONL.
    Rows are built a few at a time and batches and row groups cut at a byte budget (it took 6.5 GB)."""
    big = "x" * (1 << 20)
    path = tmp_path / f"bomb{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(1024)], "problem": pa.array([big] * 1024)
                                 .dictionary_encode(), "steps": [["a", "b"]] * 1024}), path, compression="zstd")
        assert path.stat().st_size < 10_000
    else:
        import gzip
        with gzip.open(path, "wt") as f:
            for i in range(1024):
                f.write(json.dumps({"id": f"r{i}", "problem": big, "steps": ["a", "b"]}) + "\n")
    rc, peak_mb = peak_mb_of_validate(path, tmp_path / "o")
    assert rc == 0 and peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"
    errors = pq.read_table(tmp_path / "o" / "errors", columns=["row_index", "reason"]).to_pylist()
    assert [e["row_index"] for e in errors] == list(range(1024))
    assert all(e["reason"].startswith("too large: problem has 1048576 characters") for e in errors)


def test_a_parquet_row_over_the_size_limit_is_never_built(tmp_path, monkeypatch):
    from actprm.io import readers

    rows = [good_row(0) | {"extra": None}, good_row(1) | {"extra": "x" * 50_000}, good_row(2) | {"extra": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    valid, errors = read_all([tmp_path / "in.parquet"], limits=Limits(max_row_bytes=10_000))
    assert [r["id"] for r in valid] == ["t0", "t2"] and reasons(errors) == {(1, "too large")}
    assert "the row holds" in errors[0]["reason"] and errors[0]["row_json"] == "[row not kept]"
    monkeypatch.setattr(readers, "BATCH_BYTES", 1)  # a budget below a row: one row a batch, none lost
    batches = [len(b) for b in readers.iter_raw(open_corpus([tmp_path / "in.parquet"])[0], 2048, Limits())]
    assert batches == [1, 1, 1]


def test_rows_over_the_size_limit_are_error_rows_and_never_held_whole(tmp_path):
    limits = Limits(max_row_bytes=10_000)
    big = good_row(1, meta=None) | {"extra": "x" * 50_000}
    for name, text in (("in.jsonl", "\n".join(json.dumps(r) for r in (good_row(0), big, good_row(2))) + "\n"),
                       ("in.json", json.dumps([good_row(0), big, good_row(2)]))):
        (tmp_path / name).write_text(text)
        valid, errors = read_all([tmp_path / name], limits=limits)
        assert [r["id"] for r in valid] == ["t0", "t2"] and reasons(errors) == {(1, "too large")}
        assert len(errors[0]["row_json"]) < 1000  # the oversized row is not copied into the errors table


def test_scanner_keeps_memory_to_the_limit_on_one_huge_row():
    import io

    huge = b'[{"a": "' + b"x" * 5_000_000 + b'"}, {"b": 1}]'
    out = list(iter_json_array(io.BytesIO(huge), max_depth=64, max_bytes=100_000, chunk=4096))
    assert out[0].kind == "too large" and json.loads(out[1]) == {"b": 1}


def test_scanner_cuts_elements_whatever_the_chunk_size():
    import io

    rows = [good_row(i, meta=json.dumps({"q": 'a "quoted" \\ back, [bracket] {brace}'})) for i in range(20)]
    data = json.dumps(rows, indent=1).encode()
    for chunk in (1, 2, 3, 7, 64, 1 << 20):
        out = [json.loads(e) for e in iter_json_array(io.BytesIO(data), 64, 1 << 20, chunk=chunk)]
        assert out == rows, chunk


def test_nan_in_a_json_array_is_read_as_python_reads_it(tmp_path):
    rows = [good_row(0, score=float("nan")), good_row(1, first_error_step=float("nan")), good_row(2)]
    (tmp_path / "in.json").write_text(json.dumps(rows))  # what json.dump writes by default: NaN
    valid, errors = read_all([tmp_path / "in.json"])
    assert [r["id"] for r in valid] == ["t0", "t2"] and json.loads(valid[0]["meta"])["score"] != 0
    assert reasons(errors) == {(1, "wrong type")}  # a NaN label is that row's error only


def test_one_malformed_element_of_an_array_is_one_error_row(tmp_path):
    text = "[" + json.dumps(good_row(0)) + ', {"id": "bad", "problem": tru}, ' + json.dumps(good_row(1)) + "]"
    (tmp_path / "in.json").write_text(text)
    valid, errors = read_all([tmp_path / "in.json"])
    assert [r["id"] for r in valid] == ["t0", "t1"] and reasons(errors) == {(1, "invalid JSON")}


def test_pretty_printed_json_object_is_a_file_error(tmp_path, capsys):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": [good_row(i) for i in range(8)]}, indent=2))
    assert main(["validate", "--input", str(path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretty-printed" in err and not (tmp_path / "o").exists()


def test_jsonl_with_a_bad_first_line_still_reads_the_rest(tmp_path):
    (tmp_path / "in.jsonl").write_text("{oops\n" + "".join(json.dumps(good_row(i)) + "\n" for i in range(3)))
    valid, errors = read_all([tmp_path / "in.jsonl"])
    assert len(valid) == 3 and reasons(errors) == {(0, "invalid JSON")}


@pytest.mark.parametrize("text", ["[1, 2", "[" + json.dumps(good_row(0)) + "] trailing"])
def test_a_json_array_cut_short_or_with_trailing_text_is_a_file_error(tmp_path, text):
    (tmp_path / "in.json").write_text(text)
    with pytest.raises(UserError, match="cannot be read as JSON"):
        read_all([tmp_path / "in.json"])


# ----------------------------------------------------------------------- data decided per row


@pytest.mark.parametrize("change, reason", [
    ({"problem": "a \ud800 b"}, "invalid text"),
    ({"steps": ["ok", "x\udc00"]}, "invalid text"),
    ({"steps": ["ok", ""]}, "empty step"),
    ({"steps": ["ok", "  \n"]}, "empty step"),
    ({"problem": ""}, "missing problem"),
    ({"problem": " \t"}, "missing problem"),
    ({"id": "x" * 5_000_000}, "too large"),
    ({"id": "a\x00b"}, "bad id"),
    ({"id": "   "}, "missing id"),
    ({"id": "a\ud800"}, "invalid text"),
])
def test_questionable_values_are_error_rows_with_a_reason(tmp_path, change, reason, capsys):
    rows = [good_row(0), good_row(1) | change, good_row(2)]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json.dumps escapes surrogates as \\udXXX
    assert main(["validate", "--input", str(path), "--output", str(tmp_path / "o")]) == 0
    errors = pq.read_table(tmp_path / "o" / "errors").to_pylist()
    assert [(e["row_index"], e["reason"].split(":")[0]) for e in errors] == [(1, reason)]
    assert errors[0]["id"] in (None, "t1")  # an unusable id is not copied into the id column
    assert pq.read_table(tmp_path / "o" / "valid").num_rows == 2


def test_kept_values(tmp_path):
    """Decided as kept: ids with inner or edge spaces and any printable Unicode, a step of one character."""
    row = good_row(0) | {"id": " a b ", "problem": "ü ∑ 漢字 🙂", "steps": ["x"]}
    assert check_trajectory(row, Limits())["id"] == " a b "


# --------------------------------------------------------------------------------- empty inputs


def test_empty_parquet_and_verb_output_with_no_rows(tmp_path, capsys):
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([("id", pa.string()), ("problem", pa.string()),
                                                              ("steps", pa.list_(pa.string()))])),
                   tmp_path / "empty.parquet")
    assert main(["validate", "--input", str(tmp_path / "empty.parquet"), "--output", str(tmp_path / "o")]) == 2
    assert "no rows in" in capsys.readouterr().err


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("b.jsonl", "\n  \n"), ("e.json.gz", None)])
def test_empty_jsonl_and_gz_are_no_rows(tmp_path, capsys, name, content):
    import gzip

    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if content is None else content.encode())
    assert main(["validate", "--input", str(path), "--output", str(tmp_path / "o")]) == 2
    assert f"no rows in {path}" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_scanner_bracket_runs_with_spaces_and_the_array_end(chunk):
    import io

    deep = b"[ " * 100 + b"] " * 100
    data = b'[{"a": [[1], [2]]}, ' + deep + b', {"b": {"c": [ ]}}]'
    out = list(iter_json_array(io.BytesIO(data), max_depth=64, max_bytes=1 << 20, chunk=chunk))
    assert json.loads(out[0]) == {"a": [[1], [2]]} and out[1].kind == "too deep"
    assert json.loads(out[2]) == {"b": {"c": []}} and len(out) == 3
    with pytest.raises(ValueError, match="text after the end"):
        list(iter_json_array(io.BytesIO(b"[[1]]]"), 64, 1 << 20, chunk=chunk))
    assert [json.loads(e) for e in iter_json_array(io.BytesIO(b" [ [[1]] ,[[2]]]  \n"), 64, 100, chunk=chunk)] == [
        [[1]], [[2]]]
