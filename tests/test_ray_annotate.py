"""The Ray annotate recipe (pipelines/annotate.py) against the stand-in judge server on 127.0.0.1:
global limits across actors, the same rows as the in-process job, a cache that loses nothing."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

from actprm.cli import main
from actprm.config import AnnotateConfig
from actprm.judge.cache import Answer, AnswerCache, answer_key, segments_dir
from actprm.judge.openai_judge import OpenAIJudge
from actprm.judge.prompt import build_messages
from pipelines.annotate import run as run_annotate


def config(url, data, out, **kw) -> AnnotateConfig:
    base = {"backend": "openai", "base_url": url, "judge_model": "fake-judge", "input": [str(data)],
            "output": str(out), "timeout_s": 5.0, "max_backoff_s": 0.05, "max_attempts": 3, "price_in": 1.0,
            "price_out": 2.0, "actors": 3}
    return AnnotateConfig(**{**base, **kw})


def read(directory) -> list[dict]:
    return sorted(pq.read_table(directory).to_pylist(), key=lambda r: r["id"])


def stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("latency_s", "attempts", "cached")} for r in rows]


def truth(rows: list[dict]) -> list[int]:
    return [r["first_error_step"] for r in sorted(rows, key=lambda r: r["id"])]


def test_the_in_flight_limit_holds_for_the_job_not_per_actor(served, tmp_path, local_ray):
    from pipelines import annotate as recipe

    rows, fake, server, data = served(delay_s=0.1)
    result = recipe.run_on_ray(config(server.url, data, tmp_path / "ann", concurrency=4), progress=False)
    got = read(tmp_path / "ann" / "annotations")
    assert [r["first_error_step"] for r in got] == truth(rows) and all(r["error"] is None for r in got)
    assert fake.max_in_flight == 4  # three actors, one gate: not 3 x 4
    assert fake.total_paid == 60 and result.judge_stats.answers == 60 and result.judge_stats.max_in_flight == 4
    summary = json.loads((tmp_path / "ann" / "summary.json").read_text())
    assert summary["rows_labelled"] == 60 and summary["answers_paid"] == 60 and summary["max_in_flight"] == 4
    assert summary["spent_usd"] > 0 and summary["spent_usd"] == pytest.approx(summary["cost_usd"])
    # the actors' segments are merged into the main cache and gone
    assert len(AnswerCache(tmp_path / "ann" / "judge_cache.sqlite")) == 60
    assert not segments_dir(tmp_path / "ann" / "judge_cache.sqlite").exists()


def test_the_ray_job_writes_what_the_in_process_job_writes(served, tmp_path, local_ray):
    _, fake, server, data = served(n=40, reasoning="think")
    local = run_annotate(config(server.url, data, tmp_path / "local"), progress=False)
    argv = ["annotate", "--ray", "--actors", "2", "--backend", "openai", "--base-url", server.url,
            "--judge-model", "fake-judge", "--input", str(data), "--output", str(tmp_path / "ray"),
            "--price-in", "1", "--price-out", "2", "--batch-rows", "16", "--no-progress"]
    assert main(argv) == 0
    assert stable(read(tmp_path / "ray" / "annotations")) == stable(read(tmp_path / "local" / "annotations"))
    ours, theirs = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ray", "local"))
    assert ours.keys() == theirs.keys()
    for key in ("rows_read", "rows_labelled", "labels", "answers_paid", "prompt_tokens"):
        assert ours[key] == theirs[key], key
    assert ours["cost_usd"] == pytest.approx(theirs["cost_usd"])
    assert local.judge_stats.answers == 40 and fake.total_paid == 80


def test_a_rerun_pays_nothing_and_a_killed_runs_segment_is_merged(served, tmp_path, local_ray):
    from pipelines import annotate as recipe

    rows, fake, server, data = served(n=30)
    out = tmp_path / "ann"
    cfg = config(server.url, data, out)
    # a killed run left one answer in its segment: the row it answers is never requested
    first = rows[0]
    judge = OpenAIJudge(cfg)
    key = answer_key(first["problem"], first["steps"], judge.model, judge.prompt_version, judge.sampling, 0)
    segment = AnswerCache(segments_dir(out / "judge_cache.sqlite") / "killed-0.sqlite")
    segment.put(key, Answer(f"\\boxed{{{first['first_error_step']}}}", None, "stop", 7, 3, 0.5),
                row_id=first["id"], sample=0, model=judge.model, prompt_version=judge.prompt_version)
    segment.close()
    result = recipe.run_on_ray(cfg, progress=False)
    prompt = build_messages(first["problem"], first["steps"])[0]["content"]
    assert fake.total_paid == 29 and fake.requests == 29
    assert hashlib.sha256(prompt.encode()).hexdigest() not in fake.paid
    assert result.judge_stats.answers == 29 and result.judge_stats.cached == 1
    got = read(out / "annotations")
    assert [r["first_error_step"] for r in got] == truth(rows)
    assert [r["cost_usd"] for r in got if r["id"] == first["id"]] == [0.5]
    assert not segments_dir(out / "judge_cache.sqlite").exists()

    again = recipe.run_on_ray(cfg, progress=False)  # the same output again: all from the cache
    assert fake.total_paid == 29 and again.judge_stats.answers == 0 and again.judge_stats.cached == 30
    assert stable(read(out / "annotations")) == stable(got)


def test_an_in_process_rerun_also_merges_a_killed_ray_runs_segments(served, tmp_path):
    rows, fake, server, data = served(n=5)
    cfg = config(server.url, data, tmp_path / "ann")
    judge = OpenAIJudge(cfg)
    segment = AnswerCache(segments_dir(tmp_path / "ann" / "judge_cache.sqlite") / "killed-1.sqlite")
    for r in rows[:2]:
        key = answer_key(r["problem"], r["steps"], judge.model, judge.prompt_version, judge.sampling, 0)
        segment.put(key, Answer(f"\\boxed{{{r['first_error_step']}}}", None, "stop", 7, 3, 0.5),
                    row_id=r["id"], sample=0, model=judge.model, prompt_version=judge.prompt_version)
    segment.close()
    result = run_annotate(cfg, progress=False)
    assert fake.total_paid == 3 and result.judge_stats.cached == 2
    assert [r["first_error_step"] for r in read(tmp_path / "ann" / "annotations")] == truth(rows)
    assert len(AnswerCache(tmp_path / "ann" / "judge_cache.sqlite")) == 5
    assert not segments_dir(tmp_path / "ann" / "judge_cache.sqlite").exists()
