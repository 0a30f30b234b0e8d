"""actprm.judge (the annotator contract, majority vote, the verifier backend) and `actprm annotate`."""

import asyncio
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, good_row

from actprm.cli import main
from actprm.config import AnnotateConfig, load_config
from actprm.errors import UserError
from actprm.judge import (
    VerifierAnnotator,
    failed_row,
    labelled_row,
    majority,
    make_annotator,
)
from actprm.judge.verifier import wrong_label
from actprm.schemas import arrow_schema, table_from_rows

VOLATILE = "latency_s"  # measured, so the one column that differs between two runs


def traj(i: int, n_steps: int, truth: int | None, **extra) -> dict:
    return {"id": f"r{i}", "problem": f"p{i}", "steps": [f"s{k}" for k in range(n_steps)],
            "first_error_step": truth, **extra}


def corpus(n: int) -> list[dict]:
    """n rows with 1..6 steps and every true label -1..n_steps-1 in turn."""
    rows = []
    for i in range(n):
        n_steps = 1 + i % 6
        rows.append(traj(i, n_steps, (i // 6) % (n_steps + 1) - 1))
    return rows


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != VOLATILE} for r in rows]


# ------------------------------------------------------------------ majority


@pytest.mark.parametrize("votes,expected", [
    ([3], (3, 1.0)),
    ([2, 2, 5], (2, 2 / 3)),
    ([-1, -1, -1, 0], (-1, 0.75)),
    ([-1, 3, 3, -1], (3, 0.5)),       # tie between "no error" and step 3: the error wins
    ([5, 2, 5, 2], (2, 0.5)),         # tie between two steps: the earlier one
    ([4, -1, 1, 6], (1, 0.25)),       # four-way tie: the earliest step; -1 is latest
    ([-1, 0], (0, 0.5)),
])
def test_majority_takes_the_most_common_label_and_ties_go_to_the_earliest_error(votes, expected):
    assert majority(votes) == expected
    assert majority(list(reversed(votes))) == expected  # independent of vote order


def test_majority_needs_a_vote():
    with pytest.raises(ValueError):
        majority([])


# ----------------------------------------------------------- the row helpers


def test_row_helpers_fill_every_column_of_the_annotations_table():
    names = set(arrow_schema("annotations").names)
    ok = labelled_row("a", 2, judge="j", prompt_version="v1", votes=[2, 2, 0], agreement=2 / 3, attempts=3)
    bad = failed_row("b", "refusal: no", judge="j", prompt_version="v1")
    assert set(ok) == names and set(bad) == names
    assert ok["error"] is None and ok["votes"] == [2, 2, 0]
    assert bad["first_error_step"] is None and bad["votes"] == [] and bad["agreement"] is None
    assert labelled_row("c", -1, judge="j", prompt_version="v1")["votes"] == [-1]
    assert table_from_rows([ok, bad], "annotations").schema == arrow_schema("annotations")


# ------------------------------------------------------------ the verifier


def test_wrong_label_enumerates_exactly_the_other_labels():
    for n in range(1, 6):
        for truth in range(-1, n):
            got = [wrong_label(truth, n, (k + 0.5) / n) for k in range(n)]
            assert sorted(got) == [lab for lab in range(-1, n) if lab != truth]


def test_one_row_out_per_row_in_same_ids_in_order_mixing_labelled_and_failed():
    rows = [traj(0, 3, 1), traj(1, 2, None), traj(2, 4, -1, extra="ignored"),
            {"id": "no-key", "problem": "p", "steps": ["a"]}, traj(3, 2, 7), traj(4, 1, 0)]
    out = VerifierAnnotator(wrong_rate=0.0).annotate(rows)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["first_error_step"] for r in out] == [1, None, -1, None, None, 0]
    assert out[1]["error"].startswith("no ground truth:") and out[3]["error"].startswith("no ground truth:")
    assert out[4]["error"].startswith("bad input:")
    for r in out:
        assert (r["error"] is None) == (r["first_error_step"] is not None)
        assert r["judge"] == "verifier(wrong_rate=0,refusal_rate=0,seed=0)"
        assert r["prompt_tokens"] == r["completion_tokens"] == 0 and r["cost_usd"] == 0.0
        assert r["latency_s"] >= 0.0
    assert out[0]["raw_output"] == "verifier: 1" and out[0]["agreement"] == 1.0 and out[0]["attempts"] == 1
    assert VerifierAnnotator().annotate([]) == []


def test_sync_annotate_equals_async_and_refuses_to_nest_in_a_running_loop():
    rows = corpus(60)
    judge = VerifierAnnotator(wrong_rate=0.4, refusal_rate=0.2, samples=3, seed=5)
    assert stable(judge.annotate(rows)) == stable(asyncio.run(judge.annotate_async(rows)))

    async def inside_a_loop():
        with pytest.raises(RuntimeError, match="annotate_async"):
            judge.annotate(rows)
        return await judge.annotate_async(rows)

    assert stable(asyncio.run(inside_a_loop())) == stable(judge.annotate(rows))


def test_answers_depend_only_on_seed_id_and_sample_not_on_batch_order_or_instance():
    rows = corpus(300)
    settings = {"wrong_rate": 0.5, "refusal_rate": 0.2, "samples": 3, "seed": 11}
    whole = stable(VerifierAnnotator(**settings).annotate(rows))
    judge = VerifierAnnotator(**settings)
    pieces = [judge.annotate(rows[i:i + 7]) for i in range(0, len(rows), 7)]
    assert stable([r for p in pieces for r in p]) == whole
    backwards = stable(VerifierAnnotator(**settings).annotate(rows[::-1]))
    assert backwards[::-1] == whole
    other_seed = stable(VerifierAnnotator(**(settings | {"seed": 12})).annotate(rows))
    assert sum(a != b for a, b in zip(other_seed, whole)) > len(rows) // 4


def test_a_perfect_verifier_returns_the_truth():
    rows = corpus(500)
    out = VerifierAnnotator(wrong_rate=0.0, refusal_rate=0.0, samples=3).annotate(rows)
    assert [r["first_error_step"] for r in out] == [r["first_error_step"] for r in rows]
    assert all(r["agreement"] == 1.0 and r["votes"] == [r["first_error_step"]] * 3 for r in out)


def within(measured: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(measured / n - p) <= sigmas * se


def test_measured_wrong_and_refusal_rates_match_their_settings():
    rows = corpus(4000)
    wrong_rate, refusal_rate = 0.18, 0.07
    out = VerifierAnnotator(wrong_rate=wrong_rate, refusal_rate=refusal_rate, seed=3).annotate(rows)
    refused = [r for r in out if r["error"] is not None]
    assert all(r["error"].startswith("refusal:") and r["raw_output"] == "verifier: refused" for r in refused)
    assert within(len(refused), len(rows), refusal_rate)
    answered = [(row, r) for row, r in zip(rows, out) if r["error"] is None]
    wrong = [(row, r) for row, r in answered if r["first_error_step"] != row["first_error_step"]]
    assert within(len(wrong), len(answered), wrong_rate)
    for row, r in wrong:
        assert -1 <= r["first_error_step"] < len(row["steps"])


def test_wrong_answers_are_uniform_over_the_other_labels():
    rows = [traj(i, 4, 1) for i in range(3000)]
    picks = [r["first_error_step"] for r in VerifierAnnotator(wrong_rate=1.0).annotate(rows)]
    assert set(picks) == {-1, 0, 2, 3}
    for label in (-1, 0, 2, 3):
        assert within(picks.count(label), len(picks), 0.25), label


def test_processbench_f1_is_about_one_minus_the_wrong_rate():
    rows = corpus(4000)
    out = VerifierAnnotator(wrong_rate=0.18).annotate(rows)
    err = [(row, r) for row, r in zip(rows, out) if row["first_error_step"] != -1]
    cor = [(row, r) for row, r in zip(rows, out) if row["first_error_step"] == -1]
    acc_err = sum(r["first_error_step"] == row["first_error_step"] for row, r in err) / len(err)
    acc_cor = sum(r["first_error_step"] == -1 for _, r in cor) / len(cor)
    f1 = 2 * acc_err * acc_cor / (acc_err + acc_cor)
    assert abs(f1 - 0.82) < 4 * math.sqrt(0.18 * 0.82 / len(cor))


def test_samples_vote_by_majority_and_beat_a_single_sample():
    rows = corpus(1500)
    one = VerifierAnnotator(wrong_rate=0.35, seed=1).annotate(rows)
    five = VerifierAnnotator(wrong_rate=0.35, samples=5, seed=1).annotate(rows)
    for r in five:
        assert len(r["votes"]) == 5 and r["attempts"] == 5
        assert (r["first_error_step"], pytest.approx(r["agreement"])) == majority(r["votes"])
        assert r["raw_output"] == "verifier: " + ", ".join(map(str, r["votes"]))
    # sample 0 of the 5 is the single-sample answer (same seed, id, sample index)
    assert [r["votes"][0] for r in five] == [r["first_error_step"] for r in one]
    truth = [row["first_error_step"] for row in rows]

    def acc(out):
        return sum(r["first_error_step"] == t for r, t in zip(out, truth)) / len(rows)

    assert acc(five) > acc(one) + 0.1


def test_a_row_fails_only_when_every_sample_is_refused():
    rows = corpus(2000)
    out = VerifierAnnotator(wrong_rate=0.0, refusal_rate=0.5, samples=2, seed=2).annotate(rows)
    failed = sum(r["error"] is not None for r in out)
    assert within(failed, len(rows), 0.25)
    assert all(1 <= len(r["votes"]) <= 2 for r in out if r["error"] is None)


def test_annotations_validate_against_the_schema():
    rows = corpus(50) + [traj(99, 2, None)]
    out = VerifierAnnotator(refusal_rate=0.3, samples=2).annotate(rows)
    table = table_from_rows(out, "annotations")
    assert table.schema == arrow_schema("annotations")
    for f in arrow_schema("annotations"):
        if not f.nullable:
            assert table.column(f.name).null_count == 0, f.name
    table.validate(full=True)


def test_make_annotator_and_the_config_file():
    cfg = load_config(AnnotateConfig, REPO / "configs" / "judge" / "verifier.yaml")
    assert cfg == AnnotateConfig()  # the shipped file states the defaults
    judge = make_annotator(cfg)
    assert isinstance(judge, VerifierAnnotator) and judge.wrong_rate == 0.18 and judge.refusal_rate == 0.0
    with pytest.raises(UserError, match="choose one of: verifier, openai, rollout"):
        make_annotator(cfg.model_construct(backend="human"))
    with pytest.raises(UserError, match="wrong_rate"):
        load_config(AnnotateConfig, overrides={"wrong_rate": 1.5})
    with pytest.raises(UserError, match="samples"):
        load_config(AnnotateConfig, overrides={"samples": 0})


# --------------------------------------------------------------- the CLI verb


def read(directory: Path, table: str) -> list[dict]:
    files = sorted(directory.glob("*.parquet"))
    assert files
    for f in files:
        assert pq.read_schema(f).remove_metadata() == arrow_schema(table)
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()


def test_cli_annotate_writes_annotations_errors_summary_and_reruns_identically(tmp_path, write_jsonl, capsys):
    rows = [good_row(i, first_error_step=i % 3 - 1) for i in range(6)]
    rows.append(good_row(50, first_error_step=None))
    rows.append({"id": "bad", "problem": "p", "steps": []})
    path = write_jsonl("in.jsonl", rows)
    out = tmp_path / "ann"
    args = ["annotate", "--backend", "verifier", "--input", str(path), "--output", str(out),
            "--wrong-rate", "0", "--rows-per-shard", "4", "--batch-rows", "3"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert re.fullmatch(r"annotate: 8 rows, 6 labelled, 1 failed \(no ground truth 1\), "
                        r"1 invalid \(empty steps 1\) in \d+\.\ds -> " + re.escape(str(out)), line), line
    first = read(out / "annotations", "annotations")
    assert [r["id"] for r in first] == [f"t{i}" for i in range(6)] + ["t50"]
    assert [r["first_error_step"] for r in first] == [i % 3 - 1 for i in range(6)] + [None]
    assert [(e["id"], e["reason"].split(":")[0]) for e in read(out / "errors", "errors")] == [("bad", "empty steps")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_read"] == 8 and summary["rows_labelled"] == 6 and summary["rows_failed"] == 1
    assert summary["failures_by_kind"] == {"no ground truth": 1} and summary["errors_by_kind"] == {"empty steps": 1}
    assert summary["labels"] == {"-1": 2, "0": 2, "1": 2} and summary["share_no_error"] == pytest.approx(1 / 3)

    assert main(args) == 0  # a rerun replaces the earlier annotate run, no --overwrite needed
    assert stable(read(out / "annotations", "annotations")) == stable(first)
    assert not list(out.glob(".staging-*"))


def test_cli_annotate_accepts_a_scored_table_and_keeps_other_jobs_outputs(tmp_path, capsys):
    scored = [good_row(i, first_error_step=0) | {
        "step_mean": [0.4, 0.9], "step_std": [0.1, 0.0], "pred_first_error": 0, "uncertain": True,
        "acquisition": 0.5, "selected": i % 2 == 0, "n_scored_steps": 2, "prm_model": "m"} for i in range(4)]
    src = tmp_path / "scored"
    src.mkdir()
    pq.write_table(table_from_rows(scored, "scored"), src / "part-00000.parquet")
    out = tmp_path / "run"
    assert main(["annotate", "--input", str(src), "--output", str(out), "--wrong-rate", "0"]) == 0
    assert [r["first_error_step"] for r in read(out / "annotations", "annotations")] == [0, 0, 0, 0]
    capsys.readouterr()
    # an output that holds another job's tables (no annotations/) is not replaced without --overwrite
    other = tmp_path / "validated"
    (other / "errors").mkdir(parents=True)
    assert main(["annotate", "--input", str(src), "--output", str(other)]) == 2
    assert "--overwrite" in capsys.readouterr().err and not (other / "annotations").exists()


def test_cli_annotate_user_errors_are_one_line_exit_2(tmp_path, write_jsonl, capsys):
    rc = main(["annotate", "--input", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no such file" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    path = write_jsonl("in.jsonl", [good_row(0)])
    for flags, message in ((["--backend", "oracle"], "backend"), (["--refusal-rate", "-0.1"], "refusal_rate"),
                           (["--samples", "0"], "samples")):
        assert main(["annotate", "--input", str(path), "--output", str(tmp_path / "o"), *flags]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_annotate_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["annotate", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--wrong-rate" in text and "--samples" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "actprm annotate --backend openai" in capsys.readouterr().out
