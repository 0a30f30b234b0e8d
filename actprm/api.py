"""The Python API: load a PRM, score, select, label, train, evaluate, on rows in memory.

Every function here is a thin layer over the code the `actprm` verbs run (one source of truth):

    load_prm         actprm.checkpoint.load_for_scoring                   (score, evaluate, filter)
    score            actprm.scoring.score_trajectories + selection.join_scores   (score)
    select           actprm.selection.select_rows                         (loop)
    annotate         actprm.judge.make_annotator + Annotator.annotate    (annotate, loop)
    join_labels      actprm.labels.labelled_rows                          (train)
    train            actprm.features.train_in_process                     (train, loop)
    evaluate         actprm.evaluation                                    (evaluate)
    step_rewards     the scorer's ScoreResult.step_reward (actprm.implicit)
    generate         actprm.world.arith.Generator                         (generate)
    to_trajectories  actprm.io.readers.validate_records                   (every reader)

Rows are plain dicts with the columns of the tables the verbs write (data_schemas/*.yaml), so rows move
between the API and the Parquet files of the CLI unchanged. `import actprm` stays cheap: this module (and
torch) loads on the first use of a name from it (actprm/__init__.py). docs/python-api.md walks through it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from actprm.checkpoint import load_for_scoring, resolve_device
from actprm.config import JudgeConfig, RuleSettings, ScorerSettings, TrainConfig
from actprm.errors import UserError
from actprm.evaluation import choose_threshold, evaluation_metrics, predict_rows
from actprm.features import train_in_process
from actprm.implicit import IMPLICIT_CONFIG_NAME, ImplicitPRM
from actprm.io.formats import detect_format
from actprm.io.readers import iter_batches, open_corpus, validate_records
from actprm.io.subsets import prmbench_samples
from actprm.judge import Annotator, make_annotator
from actprm.judge.base import check_contract
from actprm.labels import LabelCounts, labelled_rows
from actprm.metrics import benchmark_tables
from actprm.model import PRM_CONFIG_NAME
from actprm.outcome import OutcomeAnnotator
from actprm.schemas import Limits, RowError
from actprm.scoring import ScoreResult, score_trajectories
from actprm.selection import (
    deltas_for_rate,
    join_scores,
    model_calibration,
    select_rows,
)
from actprm.trainer import TrainResult
from actprm.uncertainty import LOOP_STRATEGIES
from actprm.world.arith import Generator, load_world

__all__ = [
    "PRM",
    "Evaluation",
    "annotate",
    "evaluate",
    "generate",
    "join_labels",
    "load_prm",
    "read_trajectories",
    "score",
    "select",
    "step_rewards",
    "to_trajectories",
    "train",
]

Records = Iterable[Mapping[str, Any]]


# --------------------------------------------------------------------------- rows


def to_trajectories(records: Records, format: str = "auto", *, strict: bool = True) -> list[dict[str, Any]]:
    """Canonical trajectory rows (data_schemas/trajectories.yaml) of in-memory records of any input format
    (canonical, processbench, activeprm, trl, rollout; `auto`: from each record's keys), checked as the
    readers check a file's rows; a record without an id gets its content hash. `strict`: an invalid record
    raises ValueError naming it; else invalid records are left out."""
    records = [dict(r) for r in records]
    batch = validate_records(records, format)
    if strict and batch.errors:
        first = batch.errors[0]
        raise ValueError(f"{len(batch.errors)} of {len(records)} records are not valid trajectories; the first, "
                         f"record {first['row_index']}: {first['reason']}")
    return batch.valid


def read_trajectories(*paths: str | os.PathLike, format: str = "auto", strict: bool = True
                      ) -> list[dict[str, Any]]:
    """The valid trajectory rows of files, directories or globs (Parquet, JSONL, JSON; local or remote), read
    as every verb reads its input. `strict`: an invalid row raises ValueError; else invalid rows are skipped."""
    rows: list[dict[str, Any]] = []
    for batch in iter_batches(open_corpus([str(p) for p in paths], format)):
        if strict and batch.errors:
            first = batch.errors[0]
            raise ValueError(f"{first['source_file']} row {first['row_index']}: {first['reason']}")
        rows += batch.valid
    return rows


def generate(n: int, *, seed: int = 0, eval_set: bool = False, world_config: str | os.PathLike | None = None,
             start: int = 0) -> list[dict[str, Any]]:
    """Rows `start`..`start+n` of the verifiable arithmetic world (`actprm generate`): trajectories with their
    true `first_error_step`, `final_answer_correct` and `reference_answer`. `eval_set`: the held-out split
    (about half with an error); `world_config`: a world YAML (configs/worlds/)."""
    gen = Generator(load_world(str(world_config) if world_config else None), seed=seed)
    return list(gen.rows(start, start + n, "eval" if eval_set else "train"))


# --------------------------------------------------------------------------- the model


@dataclass
class PRM:
    """A loaded scorer and how it scores: the ensemble PRM (a backbone + K heads, actprm.model) or an implicit
    PRM (a causal LM, actprm.implicit). Build it with :func:`load_prm`."""

    model: Any = field(repr=False)  # actprm.model.EnsemblePRM | actprm.implicit.ImplicitPRM
    tokenizer: Any = field(repr=False)
    name: str  # what scored rows record as `prm_model`
    path: str | None  # the checkpoint directory (None: the shipped model)
    device: str
    batch_tokens: int
    max_length: int | None = None
    system_prompt: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the implicit scorer's beta/reference/step_prob

    @property
    def kind(self) -> Literal["ensemble", "implicit"]:
        """`ensemble` (ActPRM heads) or `implicit` (log-ratios of a causal LM)."""
        return "implicit" if isinstance(self.model, ImplicitPRM) else "ensemble"

    @property
    def n_heads(self) -> int:
        """K, the heads whose spread is the uncertainty (1 for the implicit PRM)."""
        return 1 if self.kind == "implicit" else int(self.model.n_heads)

    @property
    def calibration(self) -> dict | None:
        """The heads' held-out calibration record (decision threshold, spread scale); None if uncalibrated."""
        return model_calibration(self.model)

    def score_steps(self, problems: Sequence[str], steps: Sequence[Sequence[str]]) -> list[ScoreResult]:
        """Score every step of every trajectory (input order): per result `probs` (n_scored_steps, K), one
        column per head, `mean` / `std` over heads, `n_scored_steps` (later steps of a too-long trajectory are
        cut), `error` (its first step alone does not fit); an implicit PRM adds `step_value` (q_k) and
        `step_reward` (r_k). The formatting, truncation and batching of `actprm score`."""
        return score_trajectories(self.model, self.tokenizer, list(problems), [list(s) for s in steps],
                                  batch_tokens=self.batch_tokens, max_length=self.max_length, device=self.device,
                                  system_prompt=self.system_prompt)


def load_prm(path: str | os.PathLike | None = None, *, scorer: Literal["auto", "ensemble", "implicit"] = "auto",
             device: Literal["auto", "cpu", "cuda"] = "auto", dtype: Literal["auto", "float32", "bfloat16"] = "auto",
             threads: int | None = None, batch_tokens: int | None = None, max_length: int | None = None,
             system_prompt: str | None = None, beta: float | None = None, reference: str | None = None,
             step_prob: Literal["value", "reward"] = "value") -> PRM:
    """Load a PRM as `actprm score --model PATH` does: a checkpoint directory (`actprm train`, `init-model`,
    `import-model`), or with no path the shipped world PRM (K=8 heads; `scorer="implicit"`: the shipped
    backbone as an implicit PRM). `scorer="auto"`: implicit for a directory holding implicit_config.json and
    no prm_config.json (what `train(objective="implicit-ce")` writes), else ensemble. `beta`, `reference`,
    `step_prob`: the implicit PRM's settings (docs/implicit-and-rollout.md, "Implicit PRM"); the rest as the verbs' flags."""
    if scorer == "auto":
        d = Path(path) if path is not None else None
        implicit = d is not None and (d / IMPLICIT_CONFIG_NAME).is_file() and not (d / PRM_CONFIG_NAME).is_file()
        scorer = "implicit" if implicit else "ensemble"
    cfg = ScorerSettings(model=None if path is None else str(path), scorer=scorer, device=device, dtype=dtype,
                         threads=threads, batch_tokens=batch_tokens, max_length=max_length,
                         system_prompt=system_prompt, beta=beta, reference=reference, step_prob=step_prob)
    dev, model, tokenizer, name, tokens = load_for_scoring(cfg)
    return PRM(model, tokenizer, name, cfg.model, dev, tokens, max_length, system_prompt,
               cfg.implicit_settings() or {})


# --------------------------------------------------------------------------- scoring and selection


def _rule(rule: RuleSettings | None, settings: dict[str, Any]) -> RuleSettings:
    if rule is None:
        return RuleSettings(**settings)
    return rule.model_copy(update=settings) if settings else rule


def score(prm: PRM, rows: Records, rule: RuleSettings | None = None, **rule_settings: Any) -> list[dict[str, Any]]:
    """Scored rows (data_schemas/scored.yaml), in input order: each trajectory row with `step_mean`, `step_std`
    (null for the implicit PRM), `step_value` / `step_reward` (implicit only), `pred_first_error`,
    `uncertain` (the ActPRM rule), `acquisition`, `selected` (= uncertain), `n_scored_steps`, `prm_model`;
    the rows `actprm score` writes for the same rows and settings. `rule` / `rule_settings`: delta_pred,
    delta_std, acquisition, ... (RuleSettings; `target_rate` chooses the deltas on these rows). A row whose
    first step alone does not fit the model comes back as itself with an `error` and no scores (the score
    job's errors/ table)."""
    rule = _rule(rule, rule_settings)
    rows = to_trajectories(rows)
    results = prm.score_steps([r["problem"] for r in rows], [r["steps"] for r in rows])
    if rule.target_rate is not None:
        probs = [res.probs for res in results if res.error is None]
        if probs:
            found = deltas_for_rate(probs, rule, prm.calibration)
            rule = rule.model_copy(update={"delta_pred": found["delta_pred"], "delta_std": found["delta_std"]})
    scored, too_long = join_scores(rows, results, rule, prm.name, calibration=prm.calibration)
    failed = dict(too_long)
    ok = iter(scored)
    return [rows[i] | {"error": failed[i]} if i in failed else next(ok) for i in range(len(rows))]


def select(scored: Sequence[Mapping[str, Any]], *, strategy: str = "actprm", budget: int | None = None,
           explore: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """The rows to label, in input order, chosen as the active loop chooses (actprm.selection.select_rows):
    `actprm` takes the rows the rule marks uncertain (with a budget: ranked by acquisition, and filled past
    the rule with an `explore` share at random); an acquisition name (`entropy`, `bald`, `variance`,
    `margin`) the top-`budget` by the rows' `acquisition`, both passing over rows with an `error`; `random`
    a seeded draw and `full` every row (up to `budget`), reading no scores. `scored`: rows from :func:`score`
    (random and full need only ids)."""
    if strategy not in LOOP_STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of: {', '.join(LOOP_STRATEGIES)}")
    rows = [dict(r) for r in scored]
    by_id = {r["id"]: r for r in rows}
    marks = select_rows(strategy, rows, by_id, budget, seed, 0, explore=explore)
    chosen = {m["id"] for m in marks if m["selected"]}
    return [r for r in rows if r["id"] in chosen]


def step_rewards(prm: PRM, problems: Sequence[str], steps: Sequence[Sequence[str]]) -> list[np.ndarray | None]:
    """Per-step process rewards for an RL loop, one float32 array per trajectory (its scored steps): an
    implicit PRM's r_k = q_k - q_{k-1}, beta * the step's log-ratio log pi_theta / pi_ref (PRIME's dense
    reward); an ensemble PRM's step mean (the chance that the step is right). None for a trajectory whose
    first step alone does not fit the model."""
    out: list[np.ndarray | None] = []
    for res in prm.score_steps(problems, steps):
        if res.error is not None:
            out.append(None)
        elif res.step_reward is not None:
            out.append(res.step_reward.astype(np.float32))
        else:
            out.append(res.mean.astype(np.float32))
    return out


# --------------------------------------------------------------------------- labels


def _annotator(judge: str | JudgeConfig | Annotator, settings: dict[str, Any]) -> tuple[Annotator, bool]:
    if isinstance(judge, Annotator):
        if settings:
            raise TypeError("settings go with a judge name or JudgeConfig, not with an Annotator")
        return judge, False
    if judge == "outcome":
        return OutcomeAnnotator(), True
    cfg = JudgeConfig(backend=judge, **settings) if isinstance(judge, str) else judge.model_copy(update=settings)
    return make_annotator(cfg), True


def annotate(rows: Records, judge: str | JudgeConfig | Annotator = "verifier", **settings: Any
             ) -> list[dict[str, Any]]:
    """Label rows with an annotator: one annotations row (data_schemas/annotations.yaml) per row, same ids
    and order; `first_error_step` is the label, null with an `error` for a row the annotator failed.
    `judge`: a backend name with its JudgeConfig settings (`verifier`: ground truth with seeded wrong answers,
    `wrong_rate`; `openai`: a judge over any OpenAI-compatible endpoint, `base_url`, `judge_model`,
    `api_key_env`, `samples`, ...; `rollout`), `outcome` (the final-answer checker, actprm.outcome), a
    JudgeConfig, or an Annotator. Runs in an event loop of its own (in a worker thread when the caller runs
    one, e.g. Jupyter)."""
    rows = to_trajectories(rows)
    annotator, mine = _annotator(judge, settings)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            out = annotator.annotate(rows)
        else:  # inside a running loop: asyncio.run needs a thread of its own
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                out = pool.submit(annotator.annotate, rows).result()
        check_contract(rows, out, annotator)
        return out
    finally:
        if mine and getattr(annotator, "cache", None) is not None:
            annotator.cache.close()  # and its lock


def join_labels(trajectories: Records, annotations: Iterable[Mapping[str, Any]], *,
                label_weight: float | Literal["agreement"] = 1.0) -> list[dict[str, Any]]:
    """Labelled rows (data_schemas/labelled.yaml) of the trajectories that have a successful annotation,
    joined by id as `actprm train --trajectories T --annotations A` joins them (failed annotations dropped,
    the first of duplicate ids kept; a ground-truth column of the trajectories never becomes a label)."""
    by_id: dict[str, dict[str, Any]] = {}
    for a in annotations:
        if a.get("first_error_step") is not None:
            by_id.setdefault(a["id"], dict(a))
    return labelled_rows(to_trajectories(trajectories), by_id, LabelCounts(), label_weight)


# --------------------------------------------------------------------------- training


def train(rows: Iterable[Mapping[str, Any]], *, output: str | os.PathLike, model: PRM | str | os.PathLike | None = None,
          objective: Literal["actprm", "implicit-ce", "implicit-dpo"] | None = None, overwrite: bool = False,
          progress: bool = False, **settings: Any) -> TrainResult:
    """One training round, in this process, as `actprm train` runs it: from `model` (a PRM, a checkpoint
    directory; None: the shipped PRM, or the shipped backbone for the implicit objectives) to a new checkpoint
    in `output` (load it with :func:`load_prm`). `objective` (default: `implicit-ce` for an implicit PRM,
    else `actprm`): `actprm` trains the heads on labelled rows (:func:`join_labels`); `implicit-ce` /
    `implicit-dpo` train an implicit PRM on outcome labels, from labelled rows or from trajectories alone
    (`reference_answer` or `final_answer_correct`, actprm.outcome). `settings`: TrainConfig's (epochs, lr,
    holdout, batch_size, backbone, seed, device, ...). Raises actprm.trainer.NothingToTrain when no row can
    be trained on."""
    start = model.path if isinstance(model, PRM) else (None if model is None else str(model))
    implicit = isinstance(model, PRM) and model.kind == "implicit"
    if objective is None:
        objective = "implicit-ce" if implicit else "actprm"
    if implicit:  # the implicit PRM trains with the beta/reference it scores with (as the loop does)
        for key in ("beta", "reference"):
            if model.settings.get(key) is not None:
                settings.setdefault(key, model.settings[key])
    cfg = TrainConfig(model=start, output=str(output), overwrite=overwrite, objective=objective, **settings)
    if cfg.workers > 1:
        raise UserError("actprm.train trains in this process; Ray Train workers: `actprm train --workers N`")
    out = Path(cfg.output)
    if out.exists() and not overwrite:
        raise UserError(f"{out}: exists; choose another output or pass overwrite=True")
    rows = [dict(r) for r in rows]
    if objective == "actprm" and any("label_first_error" not in r for r in rows):
        raise UserError("the actprm objective trains on labelled rows (label_first_error): make them with "
                        "actprm.join_labels(trajectories, annotations)")
    device = torch.device(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return train_in_process(cfg, rows, LabelCounts(labelled=len(rows)), device, progress=progress)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Evaluation:
    """ProcessBench and PRMBench figures of a PRM (`metrics`, as metrics.json of `actprm evaluate` without its read
    counts and timings) and one prediction row per evaluated trajectory (data_schemas/predictions.yaml)."""

    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]

    @property
    def mean_f1(self) -> float | None:
        """The unweighted mean of the subsets' F1 (None if no subset has one)."""
        return self.metrics["mean_f1"]

    @property
    def prmscore(self) -> float | None:
        """PRMBench's overall PRMScore (None without PRMBench rows)."""
        return self.metrics["prmbench"]["prmscore"] if self.metrics["prmbench"] else None

    def table(self) -> str:
        """Subset, n, error_acc, correct_acc, F1 in percent, as `actprm evaluate` prints them (and PRMBench's
        classes, with PRMBench rows)."""
        return benchmark_tables(self.metrics)


def evaluate(prm: PRM, data: Mapping[str, Records] | Records, *, threshold: float = 0.5,
             sweep_subset: str | None = None) -> Evaluation:
    """ProcessBench F1 (per subset and mean), PRMBench's figures, step AUROC and ECE of `prm` on labelled
    trajectories, as `actprm evaluate` computes them: `data` maps a subset name to its rows (one sequence:
    subset `eval`); rows without `first_error_step` are left out, and a subset of PRMBench's rows is scored
    by PRMBench's metric (`metrics["prmbench"]`, its `correct` samples included). A step is wrong iff its
    mean is below `threshold` (PRMBench: valid iff above it); `sweep_subset`: the threshold maximising that
    subset's F1 instead. PRMBench rows the verb would refuse (its errors table) are left out."""
    subsets = dict(data) if isinstance(data, Mapping) else {"eval": data}
    rows: list[dict[str, Any]] = []
    processbench: list[str] = []
    for name, records in subsets.items():
        records = [dict(r) for r in records]
        if records and all(detect_format(list(r)) == "prmbench" for r in records):
            labelled = []
            for row in to_trajectories(records, "prmbench", strict=False):  # refused rows left out, as the verb's
                with contextlib.suppress(RowError):                            # errors table holds them
                    labelled += prmbench_samples(row, Limits())
        else:
            labelled = [r for r in to_trajectories(records) if r["first_error_step"] is not None]
            processbench.append(name)
        rows += predict_rows(prm.model, prm.tokenizer, labelled, name, batch_tokens=prm.batch_tokens,
                             max_length=prm.max_length, device=prm.device, system_prompt=prm.system_prompt).rows
    if sweep_subset is not None and sweep_subset not in processbench:
        raise UserError(f"sweep_subset {sweep_subset!r}: no such subset scored by ProcessBench's metric; they are "
                        f"{', '.join(processbench) or 'none'}")
    used, sweep = choose_threshold(rows, threshold, sweep_subset)
    return Evaluation(evaluation_metrics(rows, processbench, used, sweep, prm.calibration, prm.name), rows)
