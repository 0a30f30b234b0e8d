"""ActPRM's Algorithm 1 on a frozen backbone: one pass over a corpus in mini-batches (torch/NumPy only).

For every mini-batch of `batch_rows` rows, in corpus order (:meth:`OnePass.step`):

1. the current heads score the batch's rows (their cached backbone outputs, :class:`~actprm.features.HeadInputs`);
2. the strategy picks the rows to label: `actprm` the rows the rule calls uncertain (on the calibrated
   probabilities, as `score` reads them) plus an `explore` share drawn at random among the certain ones
   (until the window has calibrated the heads once, the rule has no scale to read them on, and every row
   is labelled: the warm-up);
   `full` every row; `random` a given number of rows at random; `entropy` / `bald` a given number by acquisition;
3. the annotator labels them (a callback: a judge, the verifier, the world's truth);
4. the new labels join a window of the last `window` labelled rows; every `calibrate_every` batches the
   current heads rescore the window and are recalibrated on it (Platt scaling, spread scale, decision
   threshold: actprm.calibration). No label is held back for this: the window's rows are trained on, so
   the fit is in sample (BENCHMARKS "One pass" has what else was tried). Rows explored among the certain
   ones weigh the inverse of their chance of being drawn, so the window stands for the whole stream and
   not only for the rows the rule found hard;
5. `steps_per_batch` AdamW steps on the new labels plus `replay_rows` earlier labels drawn from a bounded
   reservoir (`replay` rows, a uniform sample of every label so far), the learning rate on one linear
   warm-up-and-decay schedule over the whole pass; the error steps' weight is the labels' running balance.

Every batch leaves a :class:`BatchRecord` (rows, uncertain, labelled: the selection rate falls as the heads
learn). :meth:`state_dict` / :meth:`load_state_dict` carry the whole pass (heads' optimizer, reservoir,
window, counters) so a pass stopped between batches goes on where it was. docs/loop-and-stream.md, "One pass (stream mode)".
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from actprm import calibration as cal
from actprm import uncertainty
from actprm.checkpoint import load_optimizer_state
from actprm.curves import row_stats
from actprm.features import HeadInputs, _Heads
from actprm.labels import step_targets
from actprm.selection import actprm_selection
from actprm.trainer import (
    MAX_ERROR_WEIGHT,
    actprm_loss,
    anchor_penalty,
    linear_schedule,
    set_prior_bias,
)

STRATEGIES = ("actprm", "full", "random", "entropy", "bald")
#: fewest labelled steps of each kind in the window before the heads are (re)calibrated
MIN_CALIBRATION_STEPS = 20


@dataclass(frozen=True)
class PassSettings:
    """What one pass does. The loop builds it from its config (:func:`pass_settings`): the defaults and the
    help of these fields are LoopConfig's and TrainConfig's, not repeated here."""

    total_batches: int  # batches in the whole pass: the length of the learning-rate schedule
    strategy: str
    head_lr: float
    warmup_batches: int
    steps_per_batch: int
    replay: int
    replay_rows: int
    window: int
    calibrate_every: int
    explore: float
    delta_pred: float
    delta_std: float
    decision_threshold: float | None
    spread_scale: float | None
    acquisition: str
    error_weight: float | str
    prior_bias: bool
    anchor_lambda: float
    learning_probability: float
    grad_clip: float
    seed: int
    warm_up: bool  # label every row until the first calibration (off: deltas chosen for the start heads)
    #: the window's threshold: any within this of the best F1 (and within one standard error) nearest 0.5
    threshold_tolerance: float = 0.02


def pass_settings(cfg, total_batches: int, *, strategy: str | None = None, seed: int | None = None) -> PassSettings:
    """The stream mode's one-pass settings for a pass of `total_batches` mini-batches, from a LoopConfig `cfg`
    (its stream fields, rule and strategy, and the `train:` recipe's learning rate, warm-up, error weight, prior
    bias, anchor, learning probability and clip): where each has its default and its help."""
    t = cfg.train
    return PassSettings(
        total_batches=total_batches, strategy=strategy or cfg.strategy, head_lr=t.head_lr or t.lr,
        warmup_batches=t.warmup_steps, steps_per_batch=cfg.steps_per_batch, replay=cfg.replay,
        replay_rows=cfg.replay_rows, window=cfg.calibration_window, calibrate_every=cfg.calibrate_every,
        explore=cfg.explore, delta_pred=cfg.delta_pred, delta_std=cfg.delta_std,
        decision_threshold=cfg.decision_threshold, spread_scale=cfg.spread_scale, acquisition=cfg.acquisition,
        error_weight=t.error_weight, prior_bias=t.prior_bias, anchor_lambda=t.anchor_lambda,
        learning_probability=t.learning_probability, grad_clip=t.grad_clip, seed=cfg.seed if seed is None else seed,
        warm_up=cfg.target_rate is None)  # target_rate: the deltas were chosen on the start heads' own scores


@dataclass
class BatchRecord:
    batch: int  # 1-based
    rows: int
    scored: int
    uncertain: int | None  # rows the rule called uncertain (scoring strategies)
    labelled: int
    explored: int
    error_weight: float
    lr: float
    loss: float | None
    threshold: float | None = None  # the heads' decision threshold after this batch (None: uncalibrated)

    @property
    def selection_rate(self) -> float:
        return self.labelled / self.rows if self.rows else 0.0


@dataclass
class _Labelled:
    """A labelled row: its cached inputs, step targets and labelled first error."""

    x: torch.Tensor
    targets: list[float | None]
    first_error: int


@dataclass
class _Window:
    row: _Labelled
    weight: float  # 1, or for a row explored among the certain ones the inverse of its chance


class OnePass:
    """The pass's learner: `heads` (an EnsembleHeads, trained in place) and its optimizer. `anchor`: the
    heads' starting parameters (the anchor penalty, when `anchor_lambda` > 0)."""

    def __init__(self, heads, settings: PassSettings, *, anchor: dict[str, torch.Tensor] | None = None,
                 optimizer_state: dict[str, torch.Tensor] | None = None):
        if settings.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {settings.strategy!r}")
        self.heads, self.s = heads, settings
        self.anchor = anchor or {k: v.detach().clone() for k, v in heads.state_dict().items()}
        self.holder = _Heads(heads)
        self.optimizer = torch.optim.AdamW([{"params": list(heads.parameters()), "lr": settings.head_lr,
                                             "weight_decay": 0.0}], betas=(0.9, 0.999))
        self.fresh = optimizer_state is None
        if optimizer_state:
            load_optimizer_state(self.holder, self.optimizer, optimizer_state)
        self.lr_scale = linear_schedule(settings.total_batches * settings.steps_per_batch,
                                        settings.warmup_batches * settings.steps_per_batch)
        self.batches = 0  # batches done
        self.optimizer_steps = 0
        self.seen = 0  # labelled rows so far (the reservoir's count)
        self.correct_steps = 0.0
        self.error_steps = 0.0
        self.reservoir: list[_Labelled] = []
        self.window: deque[_Window] = deque(maxlen=settings.window)
        self.rng = np.random.default_rng(settings.seed)
        self.keep_gen = torch.Generator().manual_seed(settings.seed)
        self.records: list[BatchRecord] = []
        self.last: dict[str, Any] = {}  # the last batch's selection (step)
        self.spread_unit: float | None = None  # δ_std's unit for the pass (calibrate)

    # ------------------------------------------------------------------ scoring and selection
    @torch.no_grad()
    def probs(self, x: torch.Tensor, calibrated: bool = True) -> np.ndarray:
        saved = self.heads.calibration
        if not calibrated:
            self.heads.calibration = None
        try:
            return torch.sigmoid(self.heads(x)).numpy() if len(x) else np.zeros((0, self.heads.n_heads))
        finally:
            self.heads.calibration = saved

    def rule_stats(self, inputs: HeadInputs, ok: np.ndarray) -> dict[str, np.ndarray]:
        """The rule's row statistics (curves.row_stats) of the rows of `inputs`; rows not `ok` (too long for
        the model) get uncertain False."""
        threshold, spread = cal.rule_constants(self.heads.calibration, self.s.decision_threshold, self.s.spread_scale)
        n = len(inputs)
        out: dict = {"uncertain": np.zeros(n, dtype=bool), "entropy": np.full(n, np.nan), "bald": np.full(n, np.nan),
                     "pred_first_error": np.full(n, -1), "step_mean": [None] * n, "step_std": [None] * n}
        idx = np.flatnonzero(ok)
        if idx.size:
            sub = inputs.rows(idx)
            st = row_stats(self.probs(sub.x), sub.offsets, delta_pred=self.s.delta_pred, delta_std=self.s.delta_std,
                           threshold=threshold, spread_scale=spread)
            for key in ("uncertain", "entropy", "bald", "pred_first_error"):
                out[key][idx] = st[key]
            for j, i in enumerate(idx):
                a, b = sub.offsets[j], sub.offsets[j + 1]
                out["step_mean"][i], out["step_std"][i] = st["mean"][a:b].tolist(), st["std"][a:b].tolist()
        return out

    def select(self, inputs: HeadInputs, ok: np.ndarray, count: int | None) -> tuple[np.ndarray, np.ndarray, dict]:
        """(mask of rows to label, each row's window weight, the rule's statistics). `count`: the rows to take
        for random / entropy / bald (None: the strategy decides)."""
        s, n = self.s, len(inputs)
        weights = np.ones(n)
        stats: dict[str, np.ndarray] = {}
        if s.strategy == "full":  # every row, or the first `count` (by id: a fixed order)
            take = ok if count is None else ok & uncertainty.select_budget(inputs.ids, np.where(ok, 0.0, np.nan), count)
            return take.copy(), weights, stats
        if s.strategy == "random":
            keys = np.where(ok, self.rng.random(n), np.nan)
            return ok & uncertainty.select_budget(inputs.ids, keys, count if count is not None else n), weights, stats
        stats = self.rule_stats(inputs, ok)
        if s.strategy in ("entropy", "bald"):
            acq = np.where(ok, stats[s.strategy], np.nan)
            return ok & uncertainty.select_budget(inputs.ids, acq, count if count is not None else n), weights, stats
        if self.heads.calibration is None and self.s.warm_up:  # no scale to read the heads on: label every row
            stats["uncertain"] = ok.copy()
        uncertain = stats["uncertain"] & ok
        mask = actprm_selection(inputs.ids, ok, uncertain, stats["entropy"], count, s.explore,
                                s.seed * 7919 + self.batches + 1, fill=False)
        explored = mask & ~uncertain
        if explored.any():  # drawn among the certain rows: each stands for (certain rows / drawn) of them
            weights[explored] = (ok & ~uncertain).sum() / explored.sum()
        return mask, weights, stats

    # ------------------------------------------------------------------ one batch
    def step(self, inputs: HeadInputs, annotate: Callable[[np.ndarray], Sequence[int | None]], *,
             count: int | None = None) -> BatchRecord:
        """One mini-batch: score, select, `annotate(positions)` (the labelled first error of each selected row,
        -1: none; None: no label, e.g. the judge failed), recalibrate, train. `count`: rows to label (random,
        entropy, bald), or at most (actprm, full). Returns (and keeps in `records`) the batch's record; the
        selection itself is in `last` (mask, and for scoring strategies the rule's statistics per row)."""
        ok = np.array([e is None for e in inputs.errors], dtype=bool)
        mask, weights, stats = self.select(inputs, ok, count)
        self.last = {"mask": mask, **stats}
        picked = np.flatnonzero(mask)
        labels = list(annotate(picked)) if picked.size else []
        if len(labels) != picked.size:
            raise RuntimeError(f"annotate returned {len(labels)} labels for {picked.size} rows")
        new = []
        for i, label in zip(picked, labels):
            if label is None:
                continue
            x = inputs.x[inputs.offsets[i]:inputs.offsets[i + 1]]
            targets = step_targets(int(label), int(inputs.n_steps[i]))[: len(x)]
            if all(t is None for t in targets):
                continue  # the labelled error lies beyond the steps the model scored
            new.append((_Labelled(x, targets, int(label)), float(weights[i])))
        for lab, w in new:
            self.window.append(_Window(lab, w))
        for lab, _ in new:
            flat = [t for t in lab.targets if t is not None]
            self.correct_steps += float(sum(flat))
            self.error_steps += float(len(flat) - sum(flat))
        if self.fresh and self.s.prior_bias and new and self.batches == 0:
            set_prior_bias(self.heads, [lab.targets for lab, _ in new])
        loss = self.train([lab for lab, _ in new])
        for lab, _ in new:
            self.remember(lab)
        self.batches += 1
        if (self.heads.calibration is None or self.batches % self.s.calibrate_every == 0
                or self.batches == self.s.total_batches):
            self.calibrate()
        rec = BatchRecord(batch=self.batches, rows=len(inputs), scored=int(ok.sum()),
                          uncertain=int((stats["uncertain"] & ok).sum()) if stats else None,
                          labelled=int(picked.size),
                          explored=int((mask & ~stats["uncertain"]).sum()) if stats and self.s.strategy == "actprm"
                          else 0,
                          error_weight=self.error_weight(), lr=self.s.head_lr * self.lr_scale(self.optimizer_steps),
                          loss=loss,
                          threshold=(self.heads.calibration or {}).get("threshold"))
        self.records.append(rec)
        return rec

    def error_weight(self) -> float:
        if self.s.error_weight != "balanced":
            return float(self.s.error_weight)
        if self.error_steps <= 0:
            return 1.0
        return float(min(MAX_ERROR_WEIGHT, max(1.0, self.correct_steps / self.error_steps)))

    def remember(self, lab: _Labelled) -> None:
        """Reservoir sampling (Algorithm R): every label so far is in the reservoir with the same chance."""
        self.seen += 1
        if self.s.replay <= 0:
            return
        if len(self.reservoir) < self.s.replay:
            self.reservoir.append(lab)
            return
        j = int(self.rng.integers(self.seen))
        if j < self.s.replay:
            self.reservoir[j] = lab

    def train(self, new: list[_Labelled]) -> float | None:
        """`steps_per_batch` optimizer steps on `new` plus a replay sample each; the mean loss (None: nothing
        to train on, and no step is taken; the schedule still moves on)."""
        s = self.s
        losses = []
        self.heads.calibration, saved = None, self.heads.calibration  # trained on raw logits
        self.heads.train()
        try:
            for _ in range(s.steps_per_batch):
                replay = []
                if self.reservoir and s.replay_rows > 0:
                    take = self.rng.choice(len(self.reservoir), min(s.replay_rows, len(self.reservoir)), replace=False)
                    replay = [self.reservoir[int(j)] for j in take]
                batch = new + replay
                lr = s.head_lr * self.lr_scale(self.optimizer_steps)
                self.optimizer_steps += 1
                if not batch:
                    continue
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                x = torch.cat([b.x for b in batch])
                targets = torch.tensor([0.0 if t is None else t for b in batch for t in b.targets])
                trained = torch.tensor([t is not None for b in batch for t in b.targets])
                rows = torch.cat([torch.full((len(b.x),), r, dtype=torch.long) for r, b in enumerate(batch)])
                keep = torch.rand((len(batch), self.heads.n_heads), generator=self.keep_gen) < s.learning_probability
                self.optimizer.zero_grad(set_to_none=True)
                loss = actprm_loss(self.heads(x), targets, trained, rows, torch.ones(len(batch)), keep,
                                   self.error_weight())
                if s.anchor_lambda:
                    loss = loss + s.anchor_lambda * anchor_penalty(self.heads, self.anchor)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(self.heads.parameters()), s.grad_clip)
                self.optimizer.step()
                losses.append(float(loss.item()))
        finally:
            self.heads.eval()
            self.heads.calibration = saved
        return float(np.mean(losses)) if losses else None

    def calibrate(self) -> dict | None:
        """Recalibrate the heads on the window (kept as it was while the window is too thin)."""
        steps = [t for w in self.window for t in w.row.targets if t is not None]
        errors = sum(1 for t in steps if t < 0.5)
        if errors < MIN_CALIBRATION_STEPS or len(steps) - errors < MIN_CALIBRATION_STEPS:
            return self.heads.calibration
        win = list(self.window)
        raw = self.probs(torch.cat([w.row.x for w in win]), calibrated=False)  # rescored by the current heads
        probs = np.split(raw, np.cumsum([len(w.row.x) for w in win])[:-1])
        record = cal.calibration_record(probs, [w.row.targets for w in win], [w.row.first_error for w in win],
                                        weights=[w.weight for w in win],
                                        tolerance=self.s.threshold_tolerance, one_se=True)
        if record is not None:
            record.update(window_rows=record.pop("held_out_rows"), window_steps=record.pop("held_out_steps"))
            # δ_std's unit is the heads' spread when the pass first calibrated them, held for the pass: as the
            # heads come to agree, fewer rows are uncertain (a unit refitted each time would keep the share)
            record["window_spread"] = record["spread_scale"]
            if self.spread_unit is None:
                self.spread_unit = record["spread_scale"]
            record["spread_scale"] = self.spread_unit
            self.heads.calibration = record
        return self.heads.calibration

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able metadata) of everything the pass carries between batches except the heads'
        own weights and optimizer moments (saved with the checkpoint)."""
        res, win = self.reservoir, list(self.window)
        tensors = {
            "reservoir_x": torch.cat([r.x for r in res]) if res else torch.zeros((0, self.heads.hidden_size)),
            "reservoir_n": torch.tensor([len(r.x) for r in res], dtype=torch.long),
            "window_x": torch.cat([w.row.x for w in win]) if win else torch.zeros((0, self.heads.hidden_size)),
            "window_n": torch.tensor([len(w.row.x) for w in win], dtype=torch.long),
        }
        meta = {"batches": self.batches, "optimizer_steps": self.optimizer_steps, "seen": self.seen,
                "spread_unit": self.spread_unit,
                "correct_steps": self.correct_steps, "error_steps": self.error_steps,
                "reservoir_targets": [r.targets for r in res], "reservoir_first": [r.first_error for r in res],
                "window_targets": [w.row.targets for w in win], "window_first": [w.row.first_error for w in win],
                "window_weight": [w.weight for w in win], "rng": self.rng.bit_generator.state,
                "keep_gen": self.keep_gen.get_state().tolist(), "settings": asdict(self.s),
                "records": [asdict(r) for r in self.records]}
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.batches, self.optimizer_steps, self.seen = meta["batches"], meta["optimizer_steps"], meta["seen"]
        self.correct_steps, self.error_steps = meta["correct_steps"], meta["error_steps"]
        self.spread_unit = meta["spread_unit"]
        xs = torch.split(tensors["reservoir_x"], tensors["reservoir_n"].tolist())
        self.reservoir = [_Labelled(x, t, f) for x, t, f in zip(xs, meta["reservoir_targets"],
                                                                meta["reservoir_first"])]
        xs = torch.split(tensors["window_x"], tensors["window_n"].tolist())
        self.window = deque((_Window(_Labelled(x, t, f), w) for x, t, f, w in
                             zip(xs, meta["window_targets"], meta["window_first"], meta["window_weight"])),
                            maxlen=self.s.window)
        self.rng.bit_generator.state = meta["rng"]
        self.keep_gen.set_state(torch.tensor(meta["keep_gen"], dtype=torch.uint8))
        self.records = [BatchRecord(**r) for r in meta["records"]]
        self.fresh = False


def batches_of(n_rows: int, batch_rows: int) -> int:
    return max(1, math.ceil(n_rows / batch_rows))


@dataclass
class PassSummary:
    """A pass's figures from its batch records: labels, the selection rate of its first and last tenth."""

    rows: int = 0
    labelled: int = 0
    first_tenth_rate: float | None = None
    last_tenth_rate: float | None = None
    rates: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, records: Sequence[BatchRecord]) -> PassSummary:
        out = cls(rows=sum(r.rows for r in records), labelled=sum(r.labelled for r in records),
                  rates=[r.selection_rate for r in records])
        tenth = max(1, len(records) // 10)
        if records:
            head, tail = records[:tenth], records[-tenth:]
            out.first_tenth_rate = sum(r.labelled for r in head) / max(1, sum(r.rows for r in head))
            out.last_tenth_rate = sum(r.labelled for r in tail) / max(1, sum(r.rows for r in tail))
        return out


# --------------------------------------------------------------------------- on disk, beside a checkpoint

#: the pass's state in a checkpoint directory (the stream mode's chunks)
PASS_STATE_NAME = "pass_state.safetensors"


def save_pass_state(directory: Path, learner: OnePass) -> None:
    """Write `learner.state_dict()` into `directory` (one safetensors file, the JSON part in its metadata)."""
    tensors, meta = learner.state_dict()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(Path(directory) / PASS_STATE_NAME),
              metadata={"pass": json.dumps(meta)})


def read_pass_state(directory: str | Path | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, metadata) of a checkpoint's pass state; None where it has none."""
    path = Path(directory) / PASS_STATE_NAME if directory else None
    if path is None or not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["pass"])
        return {k: f.get_tensor(k) for k in f.keys()}, meta
