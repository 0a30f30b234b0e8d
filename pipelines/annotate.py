"""`actprm annotate`: label every valid trajectory with an annotator (a judge, the verifier, rollouts).

    DIR/annotations/*.parquet   annotations schema: one row per valid input row, labelled or
                                failed with its reason (`error`)
    DIR/errors/*.parquet        errors schema: input rows that are not valid trajectories
    DIR/summary.json            counts, failures by kind, label distribution, tokens and cost

Read + validate (actprm.io; any trajectories table works, e.g. `actprm score`'s scored/
whose extra columns are ignored) → annotate batch by batch (actprm.judge) → write. Every
input row ends in exactly one of annotations/ or errors/. Outputs are staged: a crash
leaves DIR as it was.

Reruns: an --output that already holds an annotate run (DIR/annotations/) is replaced
without --overwrite. The verifier is deterministic and free, so a rerun writes identical
rows (latency_s aside); the OpenAI judge keeps every answer in DIR/judge_cache.sqlite (or
--cache) the moment it arrives, outside the staged tables, so a rerun after a kill resumes:
answered rows come from the cache, and only the rest are sent. Any other existing output
(e.g. a validate or score run's errors/ and summary.json) still needs --overwrite.

One event loop runs the whole job: rows of a batch are annotated concurrently (the judge's
limits hold across batches), the progress bar moves per finished row. `--ray` spreads the rows
over actors (below) with the same counts, contract check, staged output and summary;
what the endpoint sees is still one client:

1. Driver: pre-flight every input file; merge into the main cache (`--cache`, else
   DIR/judge_cache.sqlite) what a killed run left in its segments, so nothing paid is lost or
   paid again; checkpoint it, so that the actors can read it as an immutable file.
2. One `JudgeGate` actor owns the job's limits (`concurrency` requests in flight, the
   requests- and tokens-per-minute budgets: actprm.judge.openai_judge.LocalLimits) and its
   spend budget (`max_spend` / `max_calls`: actprm.judge.budget.SpendBudget). Every
   request of every annotator waits for its slot at the gate, reserves its worst-case cost
   there before it is sent, and gives both back when the answer is in, so the limits and
   the budget hold for the whole job, not per actor.
3. `actors` async `AnnotatorActor`s, each an annotator from the config (the OpenAI judge, or
   the verifier, which needs no gate and no cache). A judge actor reads the main cache
   (read-only) and writes every answer the moment it arrives to its own segment,
   `<cache>.segments/<run>-<i>.sqlite`: one writer per file, nothing SQLite cannot do on a
   shared filesystem.
4. Driver: reads and validates the input in batches (actprm.io), splits each batch's rows
   over the actors by content (the same trajectory under two ids goes to the same actor,
   whose in-flight check then pays it once) in chunks of at most `concurrency` rows, keeps a
   bounded number of batches in flight, and writes the annotations in input order.
5. The actors stop; their segments are merged into the main cache by key (INSERT OR IGNORE)
   and removed, also when the job fails; the summary is written and the output committed.

On a cluster, --output (and --cache) must be on a filesystem every node can reach, and the
API key's variable (--api-key-env) must be set where the actors run: the key is read there and
never travels through Ray. A --cache in use by another run is refused (exit 2): see actprm.io.lock.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from actprm.config import AnnotateConfig
from actprm.errors import UserError
from actprm.io.formats import content_id
from actprm.io.lock import job_locks, output_lock
from actprm.io.readers import check_paths, iter_batches, known_rows
from actprm.io.writers import ShardWriter, StagedOutput
from actprm.judge import Annotator, cache_path, error_kind, make_annotator
from actprm.judge.base import check_contract
from actprm.judge.budget import SpendBudget, check_spend_settings
from actprm.judge.cache import AnswerCache, LayeredCache, segments_dir
from actprm.judge.interrupt import GracefulInterrupt, stop_signals_interrupt
from actprm.judge.openai_judge import JudgeStats, LocalLimits, OpenAIJudge
from actprm.judge.rollout import RolloutAnnotator
from actprm.progress import JobResult, RowCounts, progress_bar
from pipelines.ray_session import init_ray

PAID_BACKENDS = ("openai", "rollout")  # --ray: answers cached per actor segment, limits and budget held by the gate

PARTS = ["annotations", "errors", "summary.json"]


@dataclass
class AnnotationCounts:
    """What the annotator did with the valid rows."""

    labelled: int = 0
    failed: Counter = field(default_factory=Counter)  # by error kind
    labels: Counter = field(default_factory=Counter)  # first_error_step -> rows
    agreement_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["error"] is None:
                self.labelled += 1
                self.labels[row["first_error_step"]] += 1
                self.agreement_sum += row["agreement"]
            else:
                self.failed[error_kind(row["error"])] += 1
            self.prompt_tokens += row["prompt_tokens"]
            self.completion_tokens += row["completion_tokens"]
            self.cost_usd += row["cost_usd"]

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    def as_dict(self) -> dict[str, Any]:
        n = self.labelled
        return {
            "rows_labelled": n, "rows_failed": self.n_failed, "failures_by_kind": dict(self.failed.most_common()),
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
            "share_no_error": self.labels[-1] / n if n else 0.0,
            "mean_agreement": self.agreement_sum / n if n else 0.0,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def _kinds(counter: Counter) -> str:
    return f" ({', '.join(f'{kind} {n}' for kind, n in counter.most_common())})" if counter else ""


@dataclass
class AnnotateResult(JobResult):
    counts: RowCounts  # read / valid / invalid input rows by reason kind
    annotations: AnnotationCounts
    judge: str
    seconds: float
    output: Path
    judge_stats: Any = None  # the openai judge's JudgeStats (calls, cache hits, spend); None for others
    budget: dict[str, Any] | None = None  # SpendBudget.as_dict() when --max-spend / --max-calls was set

    def summary_line(self) -> str:
        a, c, j = self.annotations, self.counts, self.judge_stats
        paid = "" if j is None else (f", {j.answers} answers paid ({j.requests} requests, "
                                     f"{j.prompt_tokens + j.completion_tokens} tokens, ${j.cost_usd:.2f}), "
                                     f"{j.cached} from cache")
        stop = ""
        if j is not None and getattr(j, "usage_invalid", 0):
            stop += f"; {j.usage_invalid} replies without valid usage, charged at their worst case"
        if self.budget and self.budget["exhausted"]:
            stop += (f"; budget exhausted, {a.failed[BUDGET_KIND]} rows not annotated (rerun with a higher "
                     f"--max-spend/--max-calls to continue from the cache)")
        return (f"annotate: {c.read} rows, {a.labelled} labelled, {a.n_failed} failed{_kinds(a.failed)}, "
                f"{c.n_errors} invalid{_kinds(c.errors)}{paid} in {self.seconds:.1f}s -> {self.output}{stop}")


BUDGET_KIND = "budget exhausted"  # the error kind of rows the budget left unannotated


async def _annotate_all(cfg: AnnotateConfig, sources: list, annotator: Annotator, out: StagedOutput,
                        counts: RowCounts, done: AnnotationCounts, progress: bool) -> None:
    """The job's one event loop: batches are read, annotated (rows concurrently) and written in turn."""
    stats = getattr(annotator, "stats", None)

    def postfix() -> dict[str, Any]:
        shown: dict[str, Any] = {"labelled": done.labelled, "failed": done.n_failed}
        if stats is not None:
            shown.update(cached=stats.cached, tokens=stats.prompt_tokens + stats.completion_tokens,
                         spent=f"${stats.cost_usd:.2f}")
        return shown

    with ShardWriter(out.path("annotations"), "annotations", cfg.rows_per_shard) as annotations, \
         ShardWriter(out.path("errors"), "errors", cfg.rows_per_shard) as errors, \
         progress_bar(known_rows(sources), "annotate", progress) as bar:

        def on_row(row: dict[str, Any]) -> None:
            done.add([row])
            bar.update(1)
            bar.set_postfix(postfix(), refresh=False)

        try:
            async with GracefulInterrupt(annotator, cfg.interrupt_grace_s) as stop:  # Ctrl-C: drain, exit 130
                for batch in iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                                          batch_rows=cfg.batch_rows):
                    stop.check()
                    rows = await annotator.annotate_async(batch.valid, on_row) if batch.valid else []
                    stop.check()
                    check_contract(batch.valid, rows, annotator)
                    annotations.add_rows(rows)
                    errors.add_rows(batch.errors)
                    counts.read += batch.n_read
                    counts.valid += len(batch.valid)
                    counts.add_errors(batch.errors)
                    bar.update(batch.n_read - len(batch.valid))
        finally:
            await annotator.aclose()


def staged_output(cfg: AnnotateConfig) -> StagedOutput:
    """The job's staged output; an earlier annotate run in it (DIR/annotations/) is replaced."""
    rerun = (Path(cfg.output) / "annotations").is_dir()
    return StagedOutput(cfg.output, PARTS, cfg.overwrite or rerun)


def write_summary(path: Path, cfg: AnnotateConfig, sources: list, judge: str, prompt_version: str,
                  counts: RowCounts, done: AnnotationCounts, stats: Any, seconds: float,
                  budget: dict[str, Any] | None = None) -> None:
    """DIR/summary.json: input counts, annotation counts, the judge's calls and spend (`stats`: JudgeStats),
    the spend limits and what they let through (`budget`: SpendBudget.as_dict())."""
    summary = {
        "files": [str(s.path) for s in sources], "backend": cfg.backend, "judge": judge,
        "prompt_version": prompt_version, "samples": cfg.samples,
        **counts.as_dict(), **done.as_dict(), **(stats.as_dict() if stats is not None else {}),
        **({"budget": budget} if budget is not None else {}),
        "seconds": round(seconds, 3), "rows_per_second": counts.read / seconds if seconds else 0.0,
    }
    path.write_text(json.dumps(summary, indent=2) + "\n")


def run(cfg: AnnotateConfig, progress: bool = True, annotator: Annotator | None = None) -> AnnotateResult:
    """Annotate every valid row of `cfg.input` into `cfg.output` (`annotator`: default from the config)."""
    if cfg.ray:
        return run_on_ray(cfg, progress)
    start = time.perf_counter()
    sources = check_paths(cfg)
    check_spend_settings(cfg)
    mine = annotator is None
    annotator = annotator or make_annotator(cfg)  # its cache, if any, is locked while open
    counts, done = RowCounts(), AnnotationCounts()
    try:
        with output_lock(cfg.output), staged_output(cfg) as out:  # one run per output at a time
            asyncio.run(_annotate_all(cfg, sources, annotator, out, counts, done, progress))
            seconds = time.perf_counter() - start
            stats = getattr(annotator, "stats", None)
            spend = getattr(annotator, "budget", None)
            budget = spend.as_dict() if spend is not None else None
            write_summary(out.path("summary.json"), cfg, sources, annotator.judge, annotator.prompt_version,
                          counts, done, stats, seconds, budget)
    finally:
        if mine and getattr(annotator, "cache", None) is not None:
            annotator.cache.close()  # and its lock
    return AnnotateResult(counts, done, annotator.judge, seconds, Path(cfg.output), stats, budget)


# ------------------------------------------------------------------ on Ray


@ray.remote(num_cpus=0)
class JudgeGate:
    """The job's request limits and spend budget, for all annotator actors together."""

    def __init__(self, concurrency: int, requests_per_minute: int | None, tokens_per_minute: int | None,
                 max_spend: float | None = None, max_calls: int | None = None):
        self.limits = LocalLimits(concurrency, requests_per_minute, tokens_per_minute)
        self.budget = SpendBudget(max_spend, max_calls) if max_spend is not None or max_calls is not None else None

    async def reserve(self, usd: float) -> str | None:
        """None: reserved; else why the budget refused."""
        assert self.budget is not None
        return None if await self.budget.reserve(usd) else self.budget.why()

    async def settle(self, reserved_usd: float, cost_usd: float, paid: bool) -> None:
        await self.budget.settle(reserved_usd, cost_usd, paid)

    async def charge(self, cost_usd: float, calls: int) -> None:
        await self.budget.charge(cost_usd, calls)

    async def budget_state(self) -> dict | None:
        return self.budget.as_dict() if self.budget is not None else None

    async def acquire(self, tokens: int) -> None:
        await self.limits.acquire(tokens)

    async def release(self) -> None:
        self.limits.release()

    async def max_in_flight(self) -> int:
        return self.limits.max_in_flight


class GateSlots:
    """An OpenAIJudge's `limits` inside an actor: each request's slot comes from the gate."""

    def __init__(self, gate: Any, concurrency: int):
        self.gate = gate
        self._waiting = asyncio.Semaphore(concurrency)  # no actor needs more places than the job has

    @asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        async with self._waiting:
            await self.gate.acquire.remote(tokens)
            try:
                yield
            finally:
                await self.gate.release.remote()


class GateBudget:
    """An OpenAIJudge's `budget` inside an actor: the job's one SpendBudget, held by the gate."""

    def __init__(self, gate: Any):
        self.gate = gate
        self._why = ""

    async def reserve(self, usd: float) -> bool:
        why = await self.gate.reserve.remote(usd)
        if why is not None:
            self._why = why
        return why is None

    async def settle(self, reserved_usd: float, cost_usd: float, paid: bool) -> None:
        await self.gate.settle.remote(reserved_usd, cost_usd, paid)

    async def charge(self, cost_usd: float, calls: int) -> None:
        await self.gate.charge.remote(cost_usd, calls)

    def why(self) -> str:
        return self._why


@ray.remote(num_cpus=1)
class AnnotatorActor:
    """One annotator of the job; a judge writes its answers to its own cache segment `name`."""

    def __init__(self, cfg: AnnotateConfig, name: str, gate: Any):
        self.cache = None
        if cfg.backend in PAID_BACKENDS:
            main = cache_path(cfg)
            self.cache = LayeredCache(AnswerCache(segments_dir(main) / f"{name}.sqlite", lock=False),
                                      AnswerCache(main, read_only=True))
            budget = GateBudget(gate) if cfg.max_spend is not None or cfg.max_calls is not None else None
            cls = RolloutAnnotator if cfg.backend == "rollout" else OpenAIJudge
            self.annotator = cls(cfg, cache=self.cache, limits=GateSlots(gate, cfg.concurrency), budget=budget)
        else:
            self.annotator = make_annotator(cfg)
        self.active = 0  # annotate calls running: an answer is cached before its call returns

    async def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.active += 1
        try:
            out = await self.annotator.annotate_async(rows)
        finally:
            self.active -= 1
        check_contract(rows, out, self.annotator)
        return out

    async def stats(self) -> JudgeStats | None:
        return getattr(self.annotator, "stats", None)

    async def drain(self, grace_s: float) -> int:
        """Ctrl-C in the driver: send nothing new, wait (at most `grace_s`) for the requests in flight,
        whose answers go to this actor's segment; returns how many annotate calls were still running."""
        stop = getattr(self.annotator, "request_stop", None)
        if stop is not None:
            stop()
        # wait for the calls, not only the requests: an answer that has arrived is cached after its request
        # left the wire (its slot and budget are settled at the gate first)
        deadline = time.monotonic() + grace_s
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.active

    async def close(self) -> None:
        await self.annotator.aclose()
        if self.cache is not None:
            self.cache.close()


def _get(refs: Any) -> Any:
    """ray.get, with a UserError raised in an actor (e.g. the endpoint refuses the key) as itself."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, UserError):
            raise exc.cause from None
        raise


def _merge_segments(main: Path | None) -> None:
    """Move every answer the actors' segments hold into the main cache; checkpoint it."""
    if main is None:
        return
    cache = AnswerCache(main)
    try:
        cache.merge_segments(segments_dir(main))
        cache.checkpoint()
    finally:
        cache.close()


def _route(rows: list[dict[str, Any]], n: int) -> list[list[int]]:
    """Row indices per actor, by content: a trajectory always goes to the same actor."""
    parts: list[list[int]] = [[] for _ in range(n)]
    for i, row in enumerate(rows):
        key = content_id(row.get("problem"), row.get("steps"))
        parts[int(key[-12:], 16) % n if key else i % n].append(i)
    return parts


class _InFlight:
    """One input batch on its way through the actors: its annotations fill in by row index."""

    def __init__(self, batch: Any):
        self.batch = batch
        self.rows: list[Any] = [None] * len(batch.valid)
        self.left = 0


def _annotate_on_actors(cfg: AnnotateConfig, sources: list, actors: list, out: Any, counts: RowCounts,
                  done: AnnotationCounts, progress: bool, judge: Any) -> None:
    chunk = cfg.concurrency
    max_batches = max(2, math.ceil(2 * cfg.concurrency / cfg.batch_rows))
    queue: deque[_InFlight] = deque()
    refs: dict[Any, tuple[_InFlight, list[int]]] = {}
    with ShardWriter(out.path("annotations"), "annotations", cfg.rows_per_shard) as annotations, \
         ShardWriter(out.path("errors"), "errors", cfg.rows_per_shard) as errors, \
         progress_bar(known_rows(sources), "annotate", progress) as bar:

        def wait_one() -> None:
            [ref], _ = ray.wait(list(refs), num_returns=1)
            item, indices = refs.pop(ref)
            rows = _get(ref)
            for i, row in zip(indices, rows):
                item.rows[i] = row
            item.left -= 1
            done.add(rows)
            bar.update(len(rows))
            bar.set_postfix({"labelled": done.labelled, "failed": done.n_failed}, refresh=False)
            while queue and queue[0].left == 0:  # written in input order
                finished = queue.popleft()
                check_contract(finished.batch.valid, finished.rows, judge)
                annotations.add_rows(finished.rows)

        for batch in iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                                  batch_rows=cfg.batch_rows):
            errors.add_rows(batch.errors)
            counts.read += batch.n_read
            counts.valid += len(batch.valid)
            counts.add_errors(batch.errors)
            bar.update(len(batch.errors))
            item = _InFlight(batch)
            queue.append(item)
            for actor, indices in zip(actors, _route(batch.valid, len(actors))):
                for start in range(0, len(indices), chunk):
                    part = indices[start:start + chunk]
                    refs[actor.annotate.remote([batch.valid[i] for i in part])] = (item, part)
                    item.left += 1
            while len(queue) > max_batches:
                wait_one()
        while refs:
            wait_one()
        assert not queue


def run_on_ray(cfg: AnnotateConfig, progress: bool = True) -> AnnotateResult:
    start = time.perf_counter()
    sources = check_paths(cfg)
    check_spend_settings(cfg)
    # the settings are checked here, before any actor starts; this one names the judge
    judge = OpenAIJudge(cfg) if cfg.backend == "openai" else make_annotator(cfg)
    main = cache_path(cfg) if cfg.backend in PAID_BACKENDS else None
    with job_locks(cfg.output, main):  # one run per output and per cache at a time (exit 2 naming the holder)
        _merge_segments(main)  # what a killed run left
        init_ray(cfg.address)
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < cfg.actors:
            raise UserError(f"--actors {cfg.actors} needs {cfg.actors} CPUs (one per actor); the Ray cluster has {cpus:g}")
        counts, done = RowCounts(), AnnotationCounts()
        with staged_output(cfg) as out:
            # every actor's waiting requests (at most `concurrency` each) and releases fit in the gate
            gate = JudgeGate.options(max_concurrency=2 * cfg.actors * cfg.concurrency + 16).remote(
                cfg.concurrency, cfg.requests_per_minute, cfg.tokens_per_minute, cfg.max_spend, cfg.max_calls)
            run_id = uuid.uuid4().hex[:8]
            actors = [AnnotatorActor.options(max_concurrency=1000).remote(cfg, f"{run_id}-{i}", gate)
                      for i in range(cfg.actors)]
            try:
                try:
                    with stop_signals_interrupt():  # SIGTERM / SIGHUP: the Ctrl-C path below
                        _annotate_on_actors(cfg, sources, actors, out, counts, done, progress, judge)
                except KeyboardInterrupt:  # first Ctrl-C: the answers in flight are cached, then exit 130
                    print(f"actprm: interrupted: sending no new requests; waiting up to {cfg.interrupt_grace_s:g}s "
                          "for those in flight (their answers are cached); Ctrl-C again to stop now",
                          file=sys.stderr, flush=True)
                    with suppress(Exception):
                        ray.get([a.drain.remote(cfg.interrupt_grace_s) for a in actors],
                                timeout=cfg.interrupt_grace_s + 10)
                    raise
                per_actor = _get([a.stats.remote() for a in actors])
                stats = None
                if cfg.backend in PAID_BACKENDS:
                    stats = JudgeStats()
                    for s in per_actor:
                        stats.add(s)
                    stats.max_in_flight = _get(gate.max_in_flight.remote())
                budget = _get(gate.budget_state.remote())
            finally:
                with suppress(Exception):  # a dead actor's segment is merged all the same
                    ray.get([a.close.remote() for a in actors], timeout=60)
                for handle in [*actors, gate]:
                    ray.kill(handle)
                _merge_segments(main)
            seconds = time.perf_counter() - start
            write_summary(out.path("summary.json"), cfg, sources, judge.judge, judge.prompt_version,
                          counts, done, stats, seconds, budget)
    return AnnotateResult(counts, done, judge.judge, seconds, Path(cfg.output), stats, budget)


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["annotate", "--ray", *sys.argv[1:]]))
