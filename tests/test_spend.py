"""Spend control against the stand-in judge server: `--max-spend` stops within one request of the budget,
every row left gets a `budget exhausted` row, and a rerun with a higher budget continues from the cache
without paying twice; `--max-calls`; the budget of a Ray job holds for all its actors together."""

from __future__ import annotations

import asyncio
import json

import pyarrow.parquet as pq
import pytest

from actprm.cli import main
from actprm.config import AnnotateConfig
from actprm.judge.budget import SpendBudget
from actprm.judge.openai_judge import OpenAIJudge
from actprm.judge.prompt import build_messages
from actprm.testing.judge_server import FakeJudge
from pipelines.annotate import run as run_annotate

# prices that make one answer cost ~$0.25 (the stand-in's answers are short)
PRICES = {"price_in": 1000.0, "price_out": 2000.0}


def config(url, data, out, **kw) -> AnnotateConfig:
    base = {"backend": "openai", "base_url": url, "judge_model": "fake-judge", "input": [str(data)],
            "output": str(out), "timeout_s": 5.0, "max_backoff_s": 0.05, "max_attempts": 3, "max_tokens": 64,
            "concurrency": 8, **PRICES}
    return AnnotateConfig(**{**base, **kw})


def read(directory) -> list[dict]:
    return sorted(pq.read_table(directory).to_pylist(), key=lambda r: r["id"])


def worst_request_usd(cfg, rows) -> float:
    judge = OpenAIJudge(cfg)
    return max(judge._worst_case_usd(build_messages(r["problem"], r["steps"]), 1) for r in rows)


def paid_usd(fake: FakeJudge, annotations: list[dict]) -> float:
    return sum(r["cost_usd"] for r in annotations)


def test_max_spend_stops_within_one_request_and_a_rerun_continues_without_paying_twice(served, tmp_path):
    rows, fake, server, data = served(n=40, delay_s=0.05)
    out = tmp_path / "ann"
    cfg = config(server.url, data, out, max_spend=3.0)
    worst = worst_request_usd(cfg, rows)
    first = run_annotate(cfg, progress=False)
    got = read(out / "annotations")
    assert len(got) == 40  # nothing lost: labelled or failed with the reason
    labelled = [r for r in got if r["error"] is None]
    stopped = [r for r in got if r["error"] is not None]
    assert labelled and stopped and all(r["error"].startswith("budget exhausted: ") for r in stopped)
    spent = paid_usd(fake, got)
    assert spent <= 3.0 and 3.0 - spent < worst  # within one request of the budget, never over
    assert fake.total_paid == len(labelled) == first.judge_stats.answers
    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"]["exhausted"] and summary["budget"]["max_spend_usd"] == 3.0
    assert summary["budget"]["charged_usd"] == pytest.approx(spent)
    assert summary["failures_by_kind"] == {"budget exhausted": len(stopped)}
    assert "budget exhausted" in first.summary_line()

    # the same budget again: everything paid comes from the cache, nothing new is bought
    again = run_annotate(cfg, progress=False)
    assert fake.total_paid == len(labelled) and again.judge_stats.answers == 0
    assert {r["id"] for r in read(out / "annotations") if r["error"] is None} == {r["id"] for r in labelled}

    # a higher budget continues: the cached labels count, new ones are bought up to the new limit
    run_annotate(config(server.url, data, out, max_spend=6.0), progress=False)
    more = read(out / "annotations")
    now = [r for r in more if r["error"] is None]
    assert len(now) > len(labelled) and {r["id"] for r in labelled} <= {r["id"] for r in now}
    assert all(n == 1 for n in fake.paid.values())  # no answer paid twice
    total = paid_usd(fake, more)
    assert fake.total_paid == len(now) and total <= 6.0 and 6.0 - total < worst


def test_max_calls_is_exact_and_failed_requests_give_their_call_back(served, tmp_path):
    _, fake, server, data = served(n=20, faults=["500", "429"], retry_after="0")
    out = tmp_path / "ann"
    result = run_annotate(config(server.url, data, out, max_calls=7, concurrency=4), progress=False)
    got = read(out / "annotations")
    assert sum(r["error"] is None for r in got) == 7 == fake.total_paid == result.judge_stats.answers
    assert fake.requests == 9  # the two failed attempts were retried and not counted as calls
    assert sum(r["error"] is not None and r["error"].startswith("budget exhausted") for r in got) == 13


def test_budget_settings_that_cannot_work_are_user_errors(served, tmp_path, capsys):
    _, _, server, data = served(n=2)
    base = ["annotate", "--input", str(data), "--output", str(tmp_path / "o"), "--no-progress"]
    assert main(base + ["--max-spend", "1"]) == 2  # the verifier is free
    assert "free" in capsys.readouterr().err
    assert main(base + ["--backend", "openai", "--base-url", server.url, "--judge-model", "m",
                        "--max-spend", "1"]) == 2  # no prices: a dollar budget cannot be checked
    err = capsys.readouterr().err
    assert "--price-in" in err and err.count("\n") == 1


def test_a_reservation_waits_for_requests_in_flight_before_giving_up():
    async def scenario():
        budget = SpendBudget(max_usd=1.0)
        assert await budget.reserve(0.6)  # in flight, worst case 0.6
        waiting = asyncio.ensure_future(budget.reserve(0.6))  # does not fit while the first is out
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await budget.settle(0.6, 0.1, True)  # it cost 0.1: the second now fits
        assert await waiting
        await budget.settle(0.6, 0.5, True)
        assert not await budget.reserve(0.6)  # 0.6 spent, nothing in flight: exhausted
        assert budget.exhausted and not await budget.reserve(0.01)  # and stays so
        return budget

    budget = asyncio.run(scenario())
    assert budget.charged_usd == pytest.approx(0.6) and budget.calls == 2 and budget.refused == 2


def test_the_budget_holds_for_a_whole_ray_job(served, tmp_path, local_ray):
    from pipelines import annotate as recipe

    rows, fake, server, data = served(n=40, delay_s=0.05)
    out = tmp_path / "ann"
    cfg = config(server.url, data, out, max_spend=3.0, actors=3)
    worst = worst_request_usd(cfg, rows)
    result = recipe.run_on_ray(cfg, progress=False)
    got = read(out / "annotations")
    spent = paid_usd(fake, got)
    assert len(got) == 40 and spent <= 3.0 and 3.0 - spent < worst  # three actors, one budget
    assert fake.total_paid == sum(r["error"] is None for r in got) == result.judge_stats.answers
    assert result.budget["exhausted"] and result.budget["charged_usd"] == pytest.approx(spent)
    assert all(r["error"] is None or r["error"].startswith("budget exhausted") for r in got)
