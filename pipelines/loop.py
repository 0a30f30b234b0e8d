"""`actprm loop`: the active-learning loop on Ray — score, select, annotate, train, evaluate, round after round.

    actprm loop --config configs/loop/rounds.yaml --output runs/loop      (or configs/loop/stream.yaml)
    python -m pipelines.loop --config configs/loop/rounds.yaml --output runs/loop --address auto

Two modes (`mode`):

- `rounds` (pool-based): each round scores the unlabelled pool (or `score_sample` rows of it) with
  the current model, selects up to the round's budget (`round_labels`) with `strategy`, annotates,
  trains one round from the last checkpoint on the labels so far (`train_on: all`) or the round's
  own (`new`), and evaluates on `eval`;
- `stream` (ActPRM's Algorithm 1): one pass over the corpus. With the ensemble on a frozen backbone (the
  default recipe) the pass runs in mini-batches of `stream_batch` rows (actprm.onepass): each is scored by
  the current heads, its selected rows are annotated and trained on (with replay of earlier labels, one
  learning-rate schedule over the whole pass) before the next; a chunk of `chunk_rows` rows is the unit
  the run directory keeps (selection, annotations, a checkpoint that carries the pass, an eval). Other
  recipes (the implicit PRM, a trained backbone) train one round on each chunk's labels.

Strategies: `actprm` (the ActPRM rule; when more rows are uncertain than the budget, the top ones by
`acquisition`), `entropy` and `bald` (top-k by that acquisition), `random` (top-k of a seeded hash of
the id: a fixed random order, nothing scored), `full` (everything left; nothing scored).

The run directory holds all state (docs/loop-and-stream.md, "The active loop"):

    RUN/config.yaml                      the resolved config, as run
    RUN/state.json                       the last completed round and step; the deltas chosen for
                                         `target_rate` (atomic)
    RUN/judge_cache.sqlite               every paid judge answer (the openai backend)
    RUN/labelled/round-NNN/selection.parquet    the rows considered, their scores, `selected`
    RUN/labelled/round-NNN/annotations.parquet  one annotation per selected row
    RUN/labelled/round-NNN/labelled.parquet     the round's labels (labelled schema)
    RUN/checkpoints/round-NNN/           the model after round NNN (with optimizer state; in the one pass
                                         also pass_state.safetensors: replay, window, counters)
    RUN/evals/round-NNN.json             ProcessBench figures of that model on `eval`
    RUN/head_inputs/{pool,eval}.safetensors  what the heads read for each row, computed once from the
                                         start model (`head_cache`: rounds mode, frozen backbone)
    RUN/metrics.jsonl                    one line per round (data_schemas/loop_metrics.yaml)

Each step writes its file atomically, and a step whose file exists is not run again, so a loop
killed at any point resumes from the last completed step: the selection is read back (not redone
by a model that has moved on), annotations are never requested twice, a finished checkpoint is
not retrained. The one pass writes a chunk's files when the chunk ends; a chunk killed midway is
done again from the last checkpoint's state with the same seeds, so it selects the same rows, and the
judge cache answers the ones already paid. metrics.jsonl is rebuilt from those files after every round. The loop stops on
`rounds`, `label_budget` (rows sent to the annotator; the last round is cut to fit exactly),
`dollar_budget` (a SpendBudget checked before every judge request: a request it cannot pay for is not
sent, its row fails `budget exhausted`, and the loop stops after that round), an exhausted pool or corpus, or a round that
selects nothing (the actprm strategy spends its budget even where the rule runs dry). A rerun with more rounds or a bigger budget continues the run.

With `train.backbone: frozen` (rounds mode, the ensemble), nothing the backbone computes changes
between rounds: the actors run it once over the pool and the eval set, and every round scores, trains
and evaluates the heads on those inputs in the driver (`head_cache`, on by default where it applies;
the same selections and checkpoints within float noise, seconds a round).

Ray: one pool of scoring actors per loop (one GPU each, else one CPU and one torch thread each),
created once and reused by every round; each actor reloads the model only when the checkpoint
changes. Annotation and training run on the driver (the judge's concurrency is asyncio's; a
training round is one process, as `actprm train`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch
import yaml
from ray.util import ActorPool

from actprm.calibration import rule_constants
from actprm.checkpoint import (
    STATE_NAME,
    load_checkpoint,
    load_scoring_model,
    optimizer_state_dict,
    resolve_device,
    save_checkpoint,
)
from actprm.config import LoopConfig, RuleSettings, dump_config
from actprm.errors import UserError
from actprm.features import (
    HeadInputs,
    extract_head_inputs,
    load_heads,
    model_fingerprint,
    score_results,
    train_and_save_cached,
    train_in_process,
)
from actprm.io.lock import output_lock
from actprm.io.readers import iter_batches, open_corpus
from actprm.io.subsets import labelled_batches, resolve_subsets
from actprm.io.writers import write_parquet_atomic, write_text_atomic
from actprm.judge import Annotator, make_annotator
from actprm.judge.budget import SpendBudget
from actprm.judge.interrupt import annotate_draining
from actprm.labels import LabelCounts, labelled_rows_of, read_labelled
from actprm.metrics import (
    benchmark_metrics,
    checkpoint_threshold_metrics,
    prediction_row,
)
from actprm.model import default_prm_path
from actprm.onepass import (
    OnePass,
    PassSettings,
    batches_of,
    pass_settings,
    read_pass_state,
    save_pass_state,
)
from actprm.outcome import OutcomeAnnotator
from actprm.progress import JobResult, progress_bar
from actprm.schemas import table_from_rows
from actprm.scoring import default_batch_tokens, score_trajectories
from actprm.selection import (
    SCORING_STRATEGIES,
    calibration_of,
    join_scores,
    model_calibration,
    recalibrate,
    select_rows,
)
from actprm.shipped import DEFAULT_MODEL_NAME
from actprm.trainer import (
    NothingToTrain,
    RoundResult,
    result_from_checkpoint,
)
from actprm.uncertainty import ACQUISITIONS
from pipelines.ray_session import init_ray

# settings a rerun may change: they say when to stop and how to run, not what a round does
RESUMABLE_CHANGES = {"rounds", "round_labels", "label_budget", "dollar_budget", "overwrite", "actors", "threads",
                     "eval_every", "batch_rows", "address", "head_cache"}


def round_name(r: int) -> str:
    return f"round-{r:03d}"


# ------------------------------------------------------------------ scoring on Ray


@ray.remote
class ScoringActor:
    """Holds a PRM; scores rows with the model of the checkpoint it is asked for (reloaded on change)."""

    def __init__(self, device: str, threads: int, batch_tokens: int | None, max_length: int | None,
                 system_prompt: str | None = None, dtype: str = "auto"):
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device, self.max_length, self.system_prompt, self.dtype = device, max_length, system_prompt, dtype
        self.batch_tokens = batch_tokens or default_batch_tokens(device)
        self.path: str | None = "<none>"

    def load(self, model: str | None, implicit: dict | None = None) -> None:
        if (model, implicit) != self.path:  # implicit: the implicit scorer's settings (actprm.implicit)
            self.model, self.tokenizer = load_scoring_model(model, self.device, implicit, self.dtype)
            self.path = (model, implicit)

    def head_inputs(self, rows: list[dict], model: str | None, fingerprint: str) -> HeadInputs:
        """What the heads of `model` read for `rows` (actprm.features; one backbone pass)."""
        self.load(model)
        return extract_head_inputs(self.model, self.tokenizer, rows, batch_tokens=self.batch_tokens,
                                   max_length=self.max_length, device=self.device, fingerprint=fingerprint,
                                   system_prompt=self.system_prompt)

    def score(self, rows: list[dict], model: str | None, selection: RuleSettings,
              implicit: dict | None = None) -> list[dict]:
        self.load(model, implicit)
        results = score_trajectories(self.model, self.tokenizer, [r["problem"] for r in rows],
                                     [r["steps"] for r in rows], batch_tokens=self.batch_tokens,
                                     max_length=self.max_length, device=self.device,
                                     system_prompt=self.system_prompt)
        scored, too_long = join_scores([{"id": r["id"]} for r in rows], results, selection, model or "",
                                       calibration=model_calibration(self.model))
        return scored + [{"id": rows[i]["id"], "error": reason} for i, reason in too_long]


class ScoringPool:
    """A fixed set of scoring actors, created once per loop (or per demo) and reused by every round."""

    def __init__(self, actors: int | None = None, device: str = "auto", batch_tokens: int | None = None,
                 max_length: int | None = None, batch_rows: int = 512, *, system_prompt: str | None = None,
                 dtype: str = "auto"):
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if device != "cpu" else 0
        if device == "cuda" and not gpus:
            raise UserError("--device cuda: the Ray cluster has no GPUs")
        n = actors or (gpus or max(1, min(4, int(resources.get("CPU", 1)))))
        options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        self.actors = [ScoringActor.options(**options).remote("cuda" if gpus else "cpu", 1, batch_tokens, max_length,
                                                                    system_prompt, dtype)
                       for _ in range(n)]
        self.batch_rows = batch_rows

    def score(self, rows: list[dict], model: str | None, selection: RuleSettings, bar=None,
              implicit: dict | None = None, part: str = "pool") -> dict[str, dict]:
        """id -> scores (join_scores' columns, or `error` for a row too long to score). `part` names the rows
        for HeadCache.score (the actors score whatever they are given)."""
        chunks = [rows[k:k + self.batch_rows] for k in range(0, len(rows), self.batch_rows)]
        out: dict[str, dict] = {}
        pool = ActorPool(self.actors)
        for scored in pool.map_unordered(lambda a, chunk: a.score.remote(chunk, model, selection, implicit), chunks):
            out.update((r["id"], r) for r in scored)
            if bar is not None:
                bar.update(len(scored))
        return out

    def head_inputs(self, rows: list[dict], model: str | None, fingerprint: str, bar=None) -> HeadInputs:
        """The heads' inputs of `rows` under `model`, computed by the actors (rows in order)."""
        chunks = [rows[k:k + self.batch_rows] for k in range(0, len(rows), self.batch_rows)]
        parts = []
        for part in ActorPool(self.actors).map(lambda a, chunk: a.head_inputs.remote(chunk, model, fingerprint),
                                               chunks):
            parts.append(part)
            if bar is not None:
                bar.update(len(part))
        return HeadInputs.concat(parts)

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a)


# ------------------------------------------------------------------ rounds on cached head inputs


def head_cache_applies(cfg: LoopConfig) -> str | None:
    """Why the loop cannot run on cached head inputs (None: it can). The stream mode's one pass always reads
    each chunk's head inputs; this says whether its eval set can be cached too."""
    t = cfg.train
    if cfg.scorer != "ensemble" or t.objective != "actprm":
        return "the implicit PRM has no heads"
    if t.backbone != "frozen":
        return f"train.backbone is {t.backbone}, not frozen"
    if t.max_length not in (None, cfg.max_length) or t.system_prompt not in (None, cfg.system_prompt):
        return "train.max_length / train.system_prompt differ from the scorer's"
    return None


class HeadCache:
    """The pool's and the eval set's head inputs, computed once from the start model by the scoring actors
    and kept in the run directory (RUN/head_inputs/{pool,eval}.safetensors); every round scores, trains and
    evaluates on them, loading only the checkpoints' heads (docs/loop-and-stream.md, "Rounds on cached backbone outputs")."""

    def __init__(self, run: RunDir, pool: ScoringPool, cfg: LoopConfig, parts: dict[str, list[dict]],
                 progress: bool):
        self.start = str(Path(cfg.model).resolve()) if cfg.model else None
        model, tokenizer = load_scoring_model(self.start, "cpu", None, "float32")
        self.heads, self.loaded = model.heads, self.start
        fingerprint = model_fingerprint(model, cfg.max_length)
        self.inputs: dict[str, HeadInputs] = {}
        for name, rows in parts.items():
            path = run.path / "head_inputs" / f"{name}.safetensors"
            have = None
            if path.is_file():
                with contextlib.suppress(ValueError):  # another model's, or an older format: computed again
                    have = HeadInputs.load(path, fingerprint)
            if have is None or set(have.ids) != {str(r["id"]) for r in rows}:
                with progress_bar(len(rows), f"head inputs ({name})", progress) as bar:
                    have = (pool.head_inputs(rows, self.start, fingerprint, bar) if rows
                            else extract_head_inputs(model, tokenizer, [], fingerprint=fingerprint))
                have.save(path)
            self.inputs[name] = have

    def score(self, rows: list[dict], model: str | None, selection: RuleSettings, bar=None,
              implicit: dict | None = None, part: str = "pool") -> dict[str, dict]:
        """ScoringPool.score on the cache: `part` is "pool" or "eval"."""
        if model != self.loaded:
            load_heads(self.heads, model or self.start or default_prm_path())
            self.loaded = model
        results = score_results(self.heads, self.inputs[part], [str(r["id"]) for r in rows])
        scored, too_long = join_scores([{"id": r["id"]} for r in rows], results, selection, model or "",
                                       calibration=self.heads.calibration)
        if bar is not None:
            bar.update(len(rows))
        return {r["id"]: r for r in scored + [{"id": rows[i]["id"], "error": why} for i, why in too_long]}


# ------------------------------------------------------------------ the run directory


class RunDir:
    def __init__(self, path: Path):
        self.path = path

    def round_dir(self, r: int) -> Path:
        return self.path / "labelled" / round_name(r)

    def selection(self, r: int) -> Path:
        return self.round_dir(r) / "selection.parquet"

    def annotations(self, r: int) -> Path:
        return self.round_dir(r) / "annotations.parquet"

    def labelled(self, r: int) -> Path:
        return self.round_dir(r) / "labelled.parquet"

    def checkpoint(self, r: int) -> Path:
        return self.path / "checkpoints" / round_name(r)

    def eval(self, r: int) -> Path:
        return self.path / "evals" / f"{round_name(r)}.json"

    @property
    def state_path(self) -> Path:
        return self.path / "state.json"

    def read_state(self) -> dict[str, Any]:
        return json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}

    def write_state(self, state: dict[str, Any]) -> None:
        write_text_atomic(json.dumps(state, indent=2) + "\n", self.state_path)


def prepare_run(cfg: LoopConfig) -> RunDir:
    """The run directory: new, or holding an earlier run of the same config (resumed)."""
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    config_path = out / "config.yaml"
    # a directory holding only head_inputs/ is a new run given another run's backbone outputs (the demo)
    if out.exists() and any(p.name != "head_inputs" for p in out.iterdir()) and not config_path.is_file():
        raise UserError(f"{out}: exists, is not empty and holds no loop run; choose another --output or "
                        "pass --overwrite")
    resolved = cfg.model_dump(mode="json")
    if config_path.is_file():
        before = yaml.safe_load(config_path.read_text()) or {}
        with contextlib.suppress(ValueError):  # settings added since that run: their defaults
            before = LoopConfig.model_validate(before).model_dump(mode="json")
        changed = sorted(k for k in set(before) | set(resolved)
                         if k not in RESUMABLE_CHANGES and before.get(k) != resolved.get(k))
        if changed:
            raise UserError(f"{out} holds a loop run with other settings ({', '.join(changed)}); "
                            "choose another --output or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dump_config(cfg), config_path)
    return RunDir(out.resolve())  # absolute: actors may run in another working directory


def check_config(cfg: LoopConfig) -> None:
    if not cfg.pool:
        raise UserError("no pool: pass --pool PATH (the corpus to select from)")
    if not cfg.eval:
        raise UserError("no eval set: pass --eval PATH (labelled trajectories, e.g. actprm generate --eval-set)")
    if not cfg.output:
        raise UserError("no output: pass --output DIR (the run directory)")
    if any(n <= 0 for n in cfg.round_labels) or not cfg.round_labels:
        raise UserError("round_labels: give one or more positive numbers (labels per round; the last repeats)")
    set_by_loop = [k for k in ("trajectories", "annotations", "labelled", "output", "model")
                   if getattr(cfg.train, k)]
    if set_by_loop:
        raise UserError(f"train.{set_by_loop[0]}: the loop sets it (the round's labels and checkpoints); "
                        "remove it from train:")
    if cfg.train.workers > 1:
        raise UserError("train.workers: the loop trains in-process (workers: 1)")
    if cfg.target_rate is not None and cfg.strategy != "actprm":
        raise UserError(f"target_rate: calibrates the ActPRM rule; strategy {cfg.strategy} does not use it")
    implicit_training = cfg.train.objective != "actprm"
    if cfg.labels == "outcome" and not implicit_training:
        raise UserError("labels: outcome gives response-level labels only: set train.objective to implicit-ce "
                        "or implicit-dpo (configs/loop/prime.yaml)")
    if implicit_training != (cfg.scorer == "implicit"):
        want = "implicit" if implicit_training else "ensemble"
        raise UserError(f"train.objective {cfg.train.objective} trains an {want} PRM: set scorer: {want}")


# ------------------------------------------------------------------ rows


def read_rows(paths: list[str], cfg: LoopConfig) -> Iterator[list[dict]]:
    """Valid trajectory rows of `paths`, batch by batch (invalid rows are skipped: `actprm validate` lists them)."""
    for batch in iter_batches(open_corpus(paths, cfg.format), limits=cfg.limits, step_separator=cfg.step_separator,
                              batch_rows=2048):
        yield batch.valid


def chunks_of(batches: Iterator[list[dict]], size: int) -> Iterator[list[dict]]:
    """Re-cut a stream of row batches into chunks of exactly `size` rows (the last may be shorter)."""
    buffer: list[dict] = []
    for rows in batches:
        buffer.extend(rows)
        while len(buffer) >= size:
            yield buffer[:size]
            buffer = buffer[size:]
    if buffer:
        yield buffer


def read_eval(cfg: LoopConfig) -> tuple[list[str], list[tuple[str, dict]]]:
    """(names of the subsets ProcessBench's metric scores, [(subset, row)] of the labelled eval rows; PRMBench's
    files give their samples, scored by its metric)."""
    subsets = resolve_subsets(cfg.eval, cfg.format)
    rows: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for s in subsets:
        for batch in labelled_batches(s, limits=cfg.limits, step_separator=cfg.step_separator, seen=seen):
            rows += [(s.name, r) for r in batch.rows]
    if not rows:
        raise UserError(f"--eval {' '.join(cfg.eval)}: no labelled rows (first_error_step) to evaluate on")
    return [s.name for s in subsets if s.benchmark == "processbench"], rows


# ------------------------------------------------------------------ the loop


@dataclass
class Totals:
    """Judge accounting and label counts over the rounds so far (rebuilt from the run directory)."""

    labels_used: int = 0
    labels: int = 0
    judge_calls: int = 0
    judge_tokens: int = 0
    judge_usd: float = 0.0
    annotated: set = field(default_factory=set)

    def add(self, annotations: list[dict]) -> None:
        for a in annotations:
            self.labels_used += 1
            self.labels += a["first_error_step"] is not None
            self.judge_calls += a["attempts"] + a["cached"]
            self.judge_tokens += a["prompt_tokens"] + a["completion_tokens"]
            self.judge_usd += a["cost_usd"]
            self.annotated.add(a["id"])


@dataclass
class LoopResult(JobResult):
    output: Path
    rounds: int
    lines: list[dict]
    stopped: str
    seconds: float

    def summary_line(self) -> str:
        last = self.lines[-1] if self.lines else {}
        scored = [ln for ln in self.lines if ln["mean_f1"] is not None]
        f1 = f"mean F1 {scored[0]['mean_f1']:.3f} -> {scored[-1]['mean_f1']:.3f}" if scored else "not evaluated"
        prm = [ln for ln in self.lines if ln.get("prmscore") is not None]
        if prm:
            f1 = (f1 + ", " if scored else "") + f"PRMScore {prm[0]['prmscore']:.3f} -> {prm[-1]['prmscore']:.3f}"
        return (f"loop: {self.rounds} rounds, {last.get('labels_used', 0)} rows annotated "
                f"({last.get('labels', 0)} labels, ${last.get('judge_usd', 0.0):.2f}), {f1}; "
                f"stopped: {self.stopped}; in {self.seconds:.1f}s -> {self.output}")


class Loop:
    def __init__(self, cfg: LoopConfig, run: RunDir, pool: ScoringPool, annotator: Annotator, progress: bool):
        self.cfg, self.run, self.pool, self.annotator, self.progress = cfg, run, pool, annotator, progress
        # SIGINT/SIGTERM/SIGHUP while the judge is paid: drain and cache what is in flight (as annotate does)
        self.grace_s = cfg.judge_config().interrupt_grace_s if cfg.labels != "outcome" else 0.0
        self.cache: HeadCache | None = None
        self.pool_inputs: HeadInputs | None = None  # the stream mode's: the pool's head inputs, where a run left them
        self.scorer: ScoringPool | HeadCache = pool  # the cache, once built (execute)
        # the strategy's acquisition ranks (entropy, bald, ...); the rule ranks by cfg.acquisition
        self.selection_cfg = RuleSettings(delta_pred=cfg.delta_pred, delta_std=cfg.delta_std,
                                          decision_threshold=cfg.decision_threshold, spread_scale=cfg.spread_scale,
                                          acquisition=cfg.strategy if cfg.strategy in ACQUISITIONS else cfg.acquisition,
                                          reduction=cfg.reduction, seed=cfg.seed)
        self.implicit = cfg.implicit_settings()  # None: the ensemble scorer
        self.state = run.read_state()
        if self.state.get("calibration"):  # chosen in round 1 of an earlier run: held for the whole run
            self.hold_deltas(self.state["calibration"])
        self.state.setdefault("seconds", {})
        self.eval_names, self.eval_rows = read_eval(cfg)
        self.device = torch.device(resolve_device(cfg.device))

    # ---- helpers
    def hold_deltas(self, calibration: dict) -> None:
        self.selection_cfg = self.selection_cfg.model_copy(
            update={"delta_pred": calibration["delta_pred"], "delta_std": calibration["delta_std"]})

    def calibrate(self, scores: dict[str, dict]) -> None:
        """target_rate: δ_pred/δ_std for about that share of these (round 1's) rows uncertain, recorded in
        state.json (before the selection is written, so a resumed round 1 selects with them) and held for
        every later round."""
        threshold, spread = rule_constants(calibration_of(self.model_after(0)), self.cfg.decision_threshold,
                                           self.cfg.spread_scale)
        record = recalibrate(list(scores.values()), self.cfg.target_rate, threshold, spread)
        if record is not None:
            self.state["calibration"] = record
            self.run.write_state(self.state)
            self.hold_deltas(record)

    def model_after(self, r: int) -> str | None:
        """The checkpoint in use after round r: its own, or the last earlier one (None: the start model)."""
        for k in range(r, 0, -1):
            if self.run.checkpoint(k).is_dir():
                return str(self.run.checkpoint(k))
        return str(Path(self.cfg.model).resolve()) if self.cfg.model else None

    def step_done(self, r: int, step: str, seconds: float) -> None:
        """Record a finished step of round r in state.json (`round`: the last round finished whole)."""
        if step != "round":
            self.state["seconds"].setdefault(str(r), {})[step] = round(seconds, 3)
        self.state.update(round=r if step == "round" else max(0, r - 1), step=step, model=self.model_after(r))
        self.run.write_state(self.state)

    def round_budget(self, r: int, totals: Totals) -> int | None:
        cfg = self.cfg
        if (cfg.mode == "stream" and cfg.strategy == "actprm") or cfg.strategy == "full":
            budget = None
        else:
            budget = cfg.round_labels[min(r, len(cfg.round_labels)) - 1]
        if cfg.label_budget is not None:
            left = max(0, cfg.label_budget - totals.labels_used)
            budget = left if budget is None else min(budget, left)
        return budget

    # ---- steps
    def select(self, r: int, candidates: list[dict], budget: int | None) -> list[dict]:
        path = self.run.selection(r)
        if path.is_file():
            return pq.read_table(path).to_pylist()
        start = time.perf_counter()
        scores: dict[str, dict] = {}
        if self.cfg.strategy in SCORING_STRATEGIES and candidates:
            with progress_bar(len(candidates), f"round {r}: score", self.progress) as bar:
                scores = self.scorer.score(candidates, self.model_after(r - 1), self.selection_cfg, bar, self.implicit)
            if self.cfg.target_rate is not None and not self.state.get("calibration"):
                self.calibrate(scores)
        rows = select_rows(self.cfg.strategy, candidates, scores, budget, self.cfg.seed, r, self.cfg.explore,
                           fill=self.cfg.mode == "rounds")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table_from_rows(rows, "loop_selection"), path)
        self.step_done(r, "select", time.perf_counter() - start)
        return rows

    def annotate(self, r: int, selected: list[dict]) -> list[dict]:
        path = self.run.annotations(r)
        if path.is_file():
            return pq.read_table(path).to_pylist()
        start = time.perf_counter()
        rows = annotate_draining(self.annotator, selected, self.grace_s) if selected else []
        if [a["id"] for a in rows] != [s["id"] for s in selected]:
            raise RuntimeError(f"annotator {self.annotator.judge!r} broke the one-row-per-input contract")
        write_parquet_atomic(table_from_rows(rows, "annotations"), path)
        self.step_done(r, "annotate", time.perf_counter() - start)
        return rows

    def write_labelled(self, r: int, annotations: list[dict], rows_by_id: dict[str, dict]) -> None:
        if not self.run.labelled(r).is_file():
            rows = labelled_rows_of(annotations, rows_by_id)
            write_parquet_atomic(table_from_rows(rows, "labelled"), self.run.labelled(r))

    def train(self, r: int) -> None:
        """One training round from the last checkpoint; none when the round has nothing to learn from."""
        out = self.run.checkpoint(r)
        if out.is_dir():
            return
        rounds = range(1, r + 1) if self.cfg.mode == "rounds" and self.cfg.train_on == "all" else [r]
        counts = LabelCounts()
        rows = read_labelled([str(self.run.labelled(k)) for k in rounds if self.run.labelled(k).is_file()], counts)
        if not rows:
            return
        start = time.perf_counter()
        tcfg = self.cfg.train.model_copy(update={"model": self.model_after(r - 1), "output": str(out),
                                                 "seed": self.cfg.train.seed + r,
                                                 # the implicit PRM trains with the beta/reference it scores with
                                                 "beta": self.cfg.train.beta or self.cfg.beta,
                                                 "reference": self.cfg.train.reference or self.cfg.reference,
                                                 "system_prompt": self.cfg.train.system_prompt
                                                 or self.cfg.system_prompt})
        try:
            if self.cache is not None:
                train_and_save_cached(tcfg, rows, counts, self.cache.inputs["pool"])
            else:
                train_in_process(tcfg, rows, counts, self.device, progress=self.progress)
        except NothingToTrain:
            return  # every label was too long for the model, or cut off: the model stays
        self.step_done(r, "train", time.perf_counter() - start)

    def evaluate(self, r: int) -> None:
        path = self.run.eval(r)
        if path.is_file():
            return
        start = time.perf_counter()
        model = self.model_after(r)
        with progress_bar(len(self.eval_rows), f"round {r}: evaluate", self.progress) as bar:
            scores = self.scorer.score([row for _, row in self.eval_rows], model, self.selection_cfg, bar,
                                       self.implicit, part="eval")
        preds = []
        for subset, row in self.eval_rows:
            s = scores[row["id"]]
            ok = s.get("error") is None
            preds.append(prediction_row(row, subset, s["step_mean"] if ok else [], (s["step_std"] or []) if ok else [],
                                        s["n_scored_steps"] if ok else 0, self.cfg.threshold))
        metrics = benchmark_metrics(preds, self.eval_names) | {"threshold": self.cfg.threshold, "model": model,
                                                             "rows": len(preds)}
        metrics["checkpoint_threshold"] = checkpoint_threshold_metrics(preds, self.eval_names, calibration_of(model))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(json.dumps(metrics, indent=2) + "\n", path)
        self.step_done(r, "evaluate", time.perf_counter() - start)

    # ---- metrics
    def metrics_line(self, r: int, totals: Totals) -> dict[str, Any]:
        cfg = self.cfg
        line: dict[str, Any] = {"round": r, "mode": cfg.mode, "strategy": cfg.strategy, "rows_considered": 0,
                                "rows_scored": 0, "rows_uncertain": None, "uncertain_rate": None,
                                "rows_selected": 0, "selection_rate": None, "trained_on": 0, "train_steps": 0,
                                "train_loss": None}
        if r > 0:
            sel = pq.read_table(self.run.selection(r), columns=["selected", "uncertain", "error"]).to_pydict()
            scored = [u for u, e in zip(sel["uncertain"], sel["error"]) if u is not None and e is None]
            line.update(rows_considered=len(sel["selected"]), rows_scored=len(scored),
                        rows_selected=sum(sel["selected"]))
            if scored:
                line.update(rows_uncertain=sum(scored), uncertain_rate=sum(scored) / len(scored))
            if sel["selected"]:
                line["selection_rate"] = line["rows_selected"] / len(sel["selected"])
            if (self.run.checkpoint(r) / STATE_NAME).is_file():
                t = result_from_checkpoint(self.run.checkpoint(r)).round
                line.update(trained_on=t.examples + t.held_out, train_steps=t.steps,
                            train_loss=None if np.isnan(t.last_loss) else t.last_loss)
        line.update(labels_used=totals.labels_used, labels=totals.labels, judge_calls=totals.judge_calls,
                    judge_tokens=totals.judge_tokens, judge_usd=round(totals.judge_usd, 6))
        m = json.loads(self.run.eval(r).read_text()) if self.run.eval(r).is_file() else None

        def mean_of(key: str) -> float | None:
            values = [s[key] for s in (m or {}).get("subsets", {}).values() if s[key] is not None]
            return float(np.mean(values)) if values else None

        own = (m or {}).get("checkpoint_threshold") or {}
        prm = (m or {}).get("prmbench") or {}
        line.update(mean_f1=m["mean_f1"] if m else None, mean_f1_checkpoint=own.get("mean_f1"),
                    prmscore=prm.get("prmscore"),
                    decision_threshold=own.get("threshold"), error_acc=mean_of("error_acc"),
                    correct_acc=mean_of("correct_acc"), step_auroc=m["step_auroc"] if m else None,
                    checkpoint=self.model_after(r), seconds=self.round_seconds(r))
        table_from_rows([line], "loop_metrics")  # the line has the documented types
        return line

    def round_seconds(self, r: int) -> float:
        times = self.state["seconds"].get(str(r), {})
        return round(times.get("round_wall", sum(times.values())), 3)

    def write_metrics(self, last: int) -> list[dict]:
        totals = Totals()
        lines = [self.metrics_line(0, totals)]
        for r in range(1, last + 1):
            totals.add(pq.read_table(self.run.annotations(r)).to_pylist())
            lines.append(self.metrics_line(r, totals))
        write_text_atomic("".join(json.dumps(ln) + "\n" for ln in lines), self.run.path / "metrics.jsonl")
        return lines

    # ---- rounds
    def stop_reason(self, r: int, totals: Totals) -> str | None:
        """Why round r is not started (None: start it). A round with a persisted selection always finishes."""
        cfg = self.cfg
        if self.run.selection(r).is_file():
            return None
        if cfg.rounds is not None and r > cfg.rounds:
            return f"{cfg.rounds} rounds done"
        if cfg.label_budget is not None and totals.labels_used >= cfg.label_budget:
            return f"label budget of {cfg.label_budget} reached"
        budget = getattr(self.annotator, "budget", None)
        if cfg.dollar_budget is not None and (totals.judge_usd >= cfg.dollar_budget
                                              or (budget is not None and budget.exhausted)):
            return f"dollar budget of ${cfg.dollar_budget:g} reached"
        return None

    def run_round(self, r: int, candidates: list[dict], rows_by_id: dict[str, dict], totals: Totals) -> dict:
        """Round r, each step skipped when its file exists; the round's metrics line."""
        start = time.perf_counter()
        selection = self.select(r, candidates, self.round_budget(r, totals))
        annotations = self.annotate(r, [rows_by_id[s["id"]] for s in selection if s["selected"]])
        self.write_labelled(r, annotations, rows_by_id)
        totals.add(annotations)
        self.train(r)
        if r % self.cfg.eval_every == 0:
            self.evaluate(r)
        self.state["seconds"].setdefault(str(r), {})["round_wall"] = round(time.perf_counter() - start, 3)
        line = self.write_metrics(r)[-1]
        self.step_done(r, "round", 0.0)
        return line

    def rounds(self, totals: Totals, done: int, bar) -> tuple[int, str]:
        """Pool-based rounds after round `done`; (last round, why it stopped)."""
        cfg = self.cfg
        pool_rows = [row for rows in read_rows(cfg.pool, cfg) for row in rows]
        rows_by_id = {row["id"]: row for row in pool_rows}
        r = done
        while True:
            stopped = self.stop_reason(r + 1, totals)
            if stopped:
                return r, stopped
            candidates = [row for row in pool_rows if row["id"] not in totals.annotated]
            if not candidates and not self.run.selection(r + 1).is_file():
                return r, "pool exhausted"
            sampled = cfg.score_sample is not None and cfg.strategy in SCORING_STRATEGIES \
                and len(candidates) > cfg.score_sample
            if sampled:
                rng = np.random.default_rng([cfg.seed, r + 1])
                keep = sorted(rng.choice(len(candidates), cfg.score_sample, replace=False))
                candidates = [candidates[i] for i in keep]
            r += 1
            line = self.run_round(r, candidates, rows_by_id, totals)
            self._show(bar, line)
            if cfg.strategy == "actprm" and not sampled and line["rows_selected"] == 0:
                return r, "nothing left to select"

    def stream(self, totals: Totals, done: int, bar) -> tuple[int, str]:
        """One pass over the corpus in chunks, from chunk `done` + 1; (last chunk, why it stopped)."""
        r = done
        for r, chunk in self.chunks_after(done):
            stopped = self.stop_reason(r, totals)
            if stopped:
                return r - 1, stopped
            self._show(bar, self.run_round(r, chunk, {row["id"]: row for row in chunk}, totals))
        return r, "end of the corpus"

    def chunks_after(self, done: int) -> Iterator[tuple[int, list[dict]]]:
        """(r, chunk) of the corpus from chunk `done` + 1; finished chunks are read past, not scored again."""
        for r, chunk in enumerate(chunks_of(read_rows(self.cfg.pool, self.cfg), self.cfg.chunk_rows), start=1):
            if r > done:
                yield r, chunk

    def use_head_cache(self) -> None:
        """Build (or read back) the head-input cache when the config asks for it (`head_cache`): the pool and
        the eval set in rounds mode, the eval set in the stream mode's one pass."""
        cfg = self.cfg
        why_not = head_cache_applies(cfg)
        if cfg.head_cache is False or (cfg.head_cache is None and why_not):
            return
        if why_not:
            raise UserError(f"head_cache: cannot run on cached head inputs: {why_not}")
        parts = {"eval": [r for _, r in self.eval_rows]}
        if cfg.mode == "rounds":
            parts["pool"] = [row for rows in read_rows(cfg.pool, cfg) for row in rows]
        self.cache = HeadCache(self.run, self.pool, cfg, parts, self.progress)
        self.scorer = self.cache

    # ---- the stream mode's one pass (frozen backbone, the ensemble)
    def one_pass(self, totals: Totals, done: int, bar) -> tuple[int, str]:
        """ActPRM's Algorithm 1 (actprm.onepass) over the corpus, chunk after chunk from chunk `done` + 1:
        each chunk's head inputs come from the scoring actors, its mini-batches are scored, labelled and
        trained on in the driver, and the chunk ends with its files and a checkpoint that carries the pass."""
        cfg = self.cfg
        sources = open_corpus(cfg.pool, cfg.format)
        known = [s.n_rows for s in sources]
        n_rows = sum(known) if all(n is not None for n in known) else sum(len(c) for c in read_rows(cfg.pool, cfg))
        total_batches = sum(batches_of(min(cfg.chunk_rows, n_rows - k), cfg.stream_batch)
                            for k in range(0, max(n_rows, 1), cfg.chunk_rows))
        start_model = self.model_after(0)
        model, _ = load_scoring_model(start_model, "cpu", None, "float32")
        fingerprint = model_fingerprint(model, cfg.max_length)
        del model
        shared = self.run.path / "head_inputs" / "pool.safetensors"  # left by a run over the same pool (the demo)
        self.pool_inputs = None
        if shared.is_file():
            with contextlib.suppress(ValueError):
                self.pool_inputs = HeadInputs.load(shared, fingerprint)
        r = done
        for r, chunk in self.chunks_after(done):
            stopped = self.stop_reason(r, totals)
            if stopped:
                return r - 1, stopped
            start = time.perf_counter()
            if not self.run.checkpoint(r).is_dir():
                self.pass_chunk(r, chunk, totals, total_batches, start_model, fingerprint)
            totals.add(pq.read_table(self.run.annotations(r)).to_pylist())
            if r % cfg.eval_every == 0:
                self.evaluate(r)
            self.state["seconds"].setdefault(str(r), {})["round_wall"] = round(time.perf_counter() - start, 3)
            line = self.write_metrics(r)[-1]
            self.step_done(r, "round", 0.0)
            self._show(bar, line)
            if self.budget_spent(totals):
                return r, self.stop_reason(r + 1, totals) or "label budget reached"
        return r, "end of the corpus"

    def budget_spent(self, totals: Totals) -> bool:
        budget = getattr(self.annotator, "budget", None)
        return (self.cfg.label_budget is not None and totals.labels_used >= self.cfg.label_budget) or (
            budget is not None and budget.exhausted)

    def pass_chunk(self, r: int, chunk: list[dict], totals: Totals, total_batches: int, start_model: str | None,
                   fingerprint: str) -> None:
        """Chunk r of the pass, from checkpoint r - 1's state. Its files are written when it ends; a chunk killed
        midway is done again from the same state and seeds, so it picks the same rows, and the judge cache
        answers those already paid (docs/loop-and-stream.md, "One pass (stream mode)")."""
        cfg = self.cfg
        step_start = time.perf_counter()
        prev = self.model_after(r - 1)
        model, tokenizer, anchor, opt_state, prev_state = load_checkpoint(prev, torch.device("cpu"))
        saved = read_pass_state(prev)
        inputs = None
        if self.pool_inputs is not None:
            with contextlib.suppress(KeyError):
                inputs = self.pool_inputs.rows(self.pool_inputs.index([str(row["id"]) for row in chunk]))
        if inputs is None:
            with progress_bar(len(chunk), f"chunk {r}: head inputs", self.progress) as bar:
                inputs = self.pool.head_inputs(chunk, start_model, fingerprint, bar)
        settings = pass_settings(cfg, total_batches)
        if saved is not None:  # the pass goes on with the settings it started with, its schedule included
            settings = PassSettings(**saved[1]["settings"])
        learner = OnePass(model.heads, settings, anchor=anchor, optimizer_state=opt_state if saved else None)
        if saved is not None:
            learner.load_state_dict(*saved)
        elif cfg.target_rate is not None:  # δ_pred/δ_std for the target rate on the first chunk, held for the pass
            if not self.state.get("calibration"):
                stats = learner.rule_stats(inputs, np.array([e is None for e in inputs.errors]))
                self.calibrate({rid: {"step_mean": m, "step_std": sd, "error": None if m is not None else "too long"}
                                for rid, m, sd in zip(inputs.ids, stats["step_mean"], stats["step_std"])})
            learner.s = replace(settings, delta_pred=self.selection_cfg.delta_pred,
                                delta_std=self.selection_cfg.delta_std)
            settings = learner.s
        first_record = len(learner.records)
        rows_by_id = {row["id"]: row for row in chunk}
        selection, annotations = [], []
        used = totals.labels_used
        per_chunk = None if cfg.strategy in ("actprm", "full") else self.round_budget(r, totals)
        n_batches = batches_of(len(chunk), cfg.stream_batch)
        with progress_bar(len(chunk), f"chunk {r}: one pass", self.progress) as bar:
            for b in range(n_batches):
                lo, hi = b * cfg.stream_batch, min(len(chunk), (b + 1) * cfg.stream_batch)
                part = inputs.rows(range(lo, hi))
                count = None
                if per_chunk is not None:  # random, entropy, bald: the chunk's labels spread over its batches
                    count = per_chunk * (b + 1) // n_batches - per_chunk * b // n_batches
                if cfg.label_budget is not None:
                    left = max(0, cfg.label_budget - used)
                    count = left if count is None else min(count, left)

                def annotate(pos: np.ndarray, lo: int = lo) -> list[int | None]:
                    rows = [chunk[lo + int(p)] for p in pos]
                    got = annotate_draining(self.annotator, rows, self.grace_s)
                    if [a["id"] for a in got] != [row["id"] for row in rows]:
                        raise RuntimeError(f"annotator {self.annotator.judge!r} broke the one-row-per-input contract")
                    annotations.extend(got)
                    labels = {x["id"]: x["label_first_error"] for x in labelled_rows_of(got, rows_by_id)}
                    return [labels.get(row["id"]) for row in rows]

                learner.step(part, annotate, count=count)
                used += int(learner.last["mask"].sum())
                selection.extend(self.selection_rows(r, part, learner))
                bar.update(hi - lo)
        self.run.selection(r).parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table_from_rows(selection, "loop_selection"), self.run.selection(r))
        write_parquet_atomic(table_from_rows(annotations, "annotations"), self.run.annotations(r))
        self.write_labelled(r, annotations, rows_by_id)
        records = learner.records[first_record:]
        losses = [rec.loss for rec in records if rec.loss is not None]
        result = RoundResult(steps=len(records) * settings.steps_per_batch, examples=sum(rec.labelled for rec in records),
                             epochs=1, seconds=time.perf_counter() - step_start, losses=losses,
                             resumed_optimizer=opt_state is not None and saved is not None,
                             error_weight=learner.error_weight(), calibration=model.heads.calibration)
        if losses:
            k = max(1, len(losses) // 10)
            result.first_loss, result.last_loss = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        counts = LabelCounts(labelled=result.examples)
        state = result.state(cfg.train, counts, prev_state, prev or DEFAULT_MODEL_NAME, head_inputs_cached=True,
                             one_pass={"chunk": r, "batches": [asdict(rec) for rec in records]})
        save_checkpoint(self.run.checkpoint(r), model, tokenizer, None, anchor, state,
                        optimizer_state=optimizer_state_dict(learner.holder, learner.optimizer),
                        extra=lambda d: save_pass_state(d, learner))
        self.step_done(r, "train", time.perf_counter() - step_start)

    @staticmethod
    def selection_rows(r: int, part: HeadInputs, learner: OnePass) -> list[dict]:
        """A batch's rows for selection.parquet (loop_selection), the scores those the batch was selected by."""
        last, out = learner.last, []
        scored = "uncertain" in last
        acquisition = learner.s.acquisition if learner.s.strategy == "actprm" else learner.s.strategy
        for i, rid in enumerate(part.ids):
            row = {"id": rid, "round": r, "batch": learner.batches, "selected": bool(last["mask"][i]),
                   "error": part.errors[i]}
            if scored and part.errors[i] is None:
                row.update(step_mean=last["step_mean"][i], step_std=last["step_std"][i],
                           pred_first_error=int(last["pred_first_error"][i]), uncertain=bool(last["uncertain"][i]),
                           acquisition=float(last[acquisition][i]), n_scored_steps=int(part.n_scored[i]))
            out.append(row)
        return out

    def runs_one_pass(self) -> bool:
        """The stream mode runs ActPRM's one pass (actprm.onepass) for the ensemble on a frozen backbone; other
        recipes train a round on each chunk's labels (`stream`)."""
        t = self.cfg.train
        return (self.cfg.mode == "stream" and self.cfg.scorer == "ensemble" and t.objective == "actprm"
                and t.backbone == "frozen")

    def execute(self) -> tuple[int, str, list[dict]]:
        self.use_head_cache()
        self.evaluate(0)
        done = int(self.state.get("round", 0))  # rounds finished whole by earlier runs
        totals = finished_totals(self.run, done)
        with progress_bar(self.cfg.rounds, "loop", self.progress, unit="rounds") as bar:
            bar.update(min(done, self.cfg.rounds or done))
            mode = self.rounds if self.cfg.mode == "rounds" else (self.one_pass if self.runs_one_pass() else self.stream)
            last, stopped = mode(totals, done, bar)
        if last and not self.run.eval(last).is_file():  # the final model is always evaluated
            self.evaluate(last)
        lines = self.write_metrics(last)
        self.state.update(round=last, step="done", stopped=stopped, model=self.model_after(last))
        self.run.write_state(self.state)
        return last, stopped, lines

    @staticmethod
    def _show(bar, line: dict) -> None:
        bar.update(1)
        shown = {"labels": line["labels_used"]}
        if line["mean_f1"] is not None:
            shown["f1"] = f"{line['mean_f1']:.3f}"
        if line.get("prmscore") is not None:
            shown["prmscore"] = f"{line['prmscore']:.3f}"
        bar.set_postfix(shown)


def finished_totals(run: RunDir, done: int) -> Totals:
    """The judge accounting of rounds 1..done (finished whole), from their annotation files."""
    totals = Totals()
    for k in range(1, done + 1):
        totals.add(pq.read_table(run.annotations(k)).to_pylist())
    return totals


def make_loop_annotator(cfg: LoopConfig, run: RunDir) -> Annotator:
    if cfg.labels == "outcome":  # PRIME-style: the final answer against reference_answer, no judge
        return OutcomeAnnotator()
    judge = cfg.judge_config()
    if judge.cache is None:
        judge = judge.model_copy(update={"cache": str(run.path / "judge_cache.sqlite")})
    budget = None
    if cfg.dollar_budget is not None:  # checked before every request, not only between rounds
        spent = finished_totals(run, int(run.read_state().get("round", 0))).judge_usd
        budget = SpendBudget(max_usd=max(0.0, cfg.dollar_budget - spent))
    return make_annotator(judge, budget=budget)


def run(cfg: LoopConfig, progress: bool = True, *, annotator: Annotator | None = None,
        pool: ScoringPool | None = None) -> LoopResult:
    """Run (or resume) the loop into `cfg.output`. `annotator` / `pool`: given by the caller (tests, the demo)."""
    start = time.perf_counter()
    check_config(cfg)
    open_corpus(cfg.pool, cfg.format)  # bad paths: one line now
    with output_lock(cfg.output):  # one run per run directory at a time (exit 2 naming the holder)
        return _run(cfg, progress, annotator, pool, start)


def _run(cfg: LoopConfig, progress: bool, annotator: Annotator | None, pool: ScoringPool | None,
         start: float) -> LoopResult:
    run_dir = prepare_run(cfg)
    annotator = annotator or make_loop_annotator(cfg, run_dir)
    threads = cfg.threads or cfg.train.threads
    if threads:
        torch.set_num_threads(threads)
    own_pool = pool is None
    if own_pool:
        init_ray(cfg.address)
        pool = ScoringPool(cfg.actors, cfg.device, cfg.batch_tokens, cfg.max_length, cfg.batch_rows,
                           system_prompt=cfg.system_prompt, dtype=cfg.dtype)
    try:
        last, stopped, lines = Loop(cfg, run_dir, pool, annotator, progress).execute()
    finally:
        if own_pool:
            pool.close()
    return LoopResult(run_dir.path, last, lines, stopped, time.perf_counter() - start)


if __name__ == "__main__":
    from actprm.cli import main

    sys.exit(main(["loop", *sys.argv[1:]]))
