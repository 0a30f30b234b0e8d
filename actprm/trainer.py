"""One PRM training round (plain torch; no Ray): examples, batches, the objectives, the optimizer loop.

    labelled rows + checkpoint  ->  new checkpoint (+ optimizer state, anchor heads, trainer_state.json)

The ActPRM objective: binary cross-entropy with logits for every head at every labelled separator
(targets from `actprm.labels.step_targets`); each (head, trajectory) pair is kept with probability
`learning_probability`; each row counts `label_weight` times; plus
``anchor_lambda * mean((phi - phi_init)^2)`` over the head parameters against the heads the first
round started from, so every later round anchors to the same point. The implicit objectives
(`implicit-ce`, `implicit-dpo`) train a causal LM from response-level labels (`actprm.implicit`).
`OBJECTIVES` maps each objective to its round; docs/loop-and-stream.md, "Training rounds", has the recipe.
A round started from a checkpoint with optimizer state continues those moments; the learning-rate
schedule (linear warm-up, linear decay) runs over each round's own steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from actprm import precision
from actprm.calibration import calibration_record
from actprm.checkpoint import (
    DEFAULT_MODEL_NAME,
    load_checkpoint,
    load_optimizer_state,
    read_optimizer_state,
    read_trainer_state,
    save_checkpoint,
)
from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.implicit import (
    SHIPPED_BACKBONE,
    ImplicitPRM,
    dpo_pairs,
    implicit_ce_loss,
    implicit_dpo_loss,
    load_implicit,
    outcome_of,
)
from actprm.labels import LabelCounts, step_targets
from actprm.progress import JobResult, progress_bar
from actprm.scoring import EncodedTrajectory, TrajectoryEncoder, encoder_for
from actprm.uncertainty import random_score


class NothingToTrain(UserError):
    """No labelled row survived the join and the encoder: the model stays as it is."""


# --------------------------------------------------------------------------- batches


@dataclass
class Example:
    input_ids: list[int]
    sep_positions: list[int]
    targets: list[float | None]  # one per scored separator
    weight: float
    answer_start: int = 0


def build_examples(rows: list[dict[str, Any]], encoder: TrajectoryEncoder, counts: LabelCounts) -> list[Example]:
    encoded: list[EncodedTrajectory] = encoder.encode([r["problem"] for r in rows], [r["steps"] for r in rows])
    out = []
    for row, enc in zip(rows, encoded):
        if enc.error is not None:
            counts.too_long += 1
            continue
        counts.truncated += int(enc.truncated)
        targets = step_targets(int(row["label_first_error"]), len(row["steps"]), row.get("step_labels"))
        targets = targets[: enc.n_scored_steps]
        if all(t is None for t in targets):  # the earliest error was cut off: nothing to learn
            counts.error_cut_off += 1
            continue
        out.append(Example(enc.input_ids, enc.sep_positions, targets, float(row.get("label_weight") or 1.0),
                           enc.answer_start))
    return out


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 50
                   ) -> Iterator[list[int]]:
    """One epoch of index batches: shuffle, sort pools of `pool_batches` batches by length, cut, shuffle.

    Little padding, random order; every index exactly once.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    for k in range(0, len(order), pool):
        chunk = order[k : k + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches = [chunk[j : j + batch_size].tolist() for j in range(0, len(chunk), batch_size)]
        for j in rng.permutation(len(batches)):
            yield batches[j]


def collate(examples: Sequence[Example], pad_id: int, device: torch.device):
    """(input_ids, separator_mask, answer_start (B,), targets (S,), trained (S,), row_of_sep (S,), weights (B,))."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    sep = torch.zeros((len(examples), T), dtype=torch.bool)
    targets, trained, rows = [], [], []
    for r, e in enumerate(examples):
        ids[r, : len(e.input_ids)] = torch.tensor(e.input_ids)
        sep[r, e.sep_positions] = True
        for t in e.targets:
            targets.append(0.0 if t is None else t)
            trained.append(t is not None)
            rows.append(r)
    weights = torch.tensor([e.weight for e in examples], dtype=torch.float32)
    answer = torch.tensor([e.answer_start for e in examples], dtype=torch.long)
    return (ids.to(device), sep.to(device), answer.to(device), torch.tensor(targets, device=device),
            torch.tensor(trained, device=device), torch.tensor(rows, device=device), weights.to(device))


# --------------------------------------------------------------------------- loss


def actprm_loss(logits: torch.Tensor, targets: torch.Tensor, trained: torch.Tensor, rows: torch.Tensor,
                row_weights: torch.Tensor, keep: torch.Tensor, error_weight: float = 1.0) -> torch.Tensor:
    """Masked, weighted BCE over (separator, head), averaged over the kept entries.

    logits (S, K); targets, trained, rows (S,); row_weights (B,); keep (B, K) the Bernoulli
    mask of (trajectory, head) pairs; `error_weight` multiplies the weight of steps whose target is < 0.5.
    """
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.unsqueeze(1).expand_as(logits),
                                             reduction="none")  # (S, K)
    w = keep[rows].float() * trained.unsqueeze(1).float() * row_weights[rows].unsqueeze(1)
    if error_weight != 1.0:
        w = w * torch.where(targets < 0.5, error_weight, 1.0).unsqueeze(1)
    return (bce * w).sum() / w.sum().clamp_min(1e-8)


@torch.no_grad()
def set_prior_bias(heads: torch.nn.Module, targets: Sequence[Sequence[float | None]]) -> float:
    """Set every head's output bias to logit(p), p the mean of the trained targets (the labelled steps'
    share of correct ones): an untrained head then starts at the label prior instead of 0.5. Returns p."""
    flat = [t for ts in targets for t in ts if t is not None]
    p = min(max(float(np.mean(flat)) if flat else 0.5, 1e-4), 1 - 1e-4)
    heads.layers()[-1][1].fill_(math.log(p / (1 - p)))  # the output layer's bias, whatever the depth
    return p


#: passes at most when `epochs` is null: the held-out stopping rule ends a round sooner
MAX_EPOCHS = 50
#: passes when `epochs` is null and nothing is held out (`holdout: 0`)
EPOCHS_WITHOUT_HOLDOUT = 8
#: the largest weight "balanced" gives error steps
MAX_ERROR_WEIGHT = 50.0
#: fewest rows on each side of the held-out split; with fewer labels nothing is held out
MIN_SPLIT_ROWS = 4


def with_epochs(cfg: TrainConfig, holding_out: bool) -> TrainConfig:
    """`cfg` with `epochs` filled when null: MAX_EPOCHS under the stopping rule, else EPOCHS_WITHOUT_HOLDOUT
    (the implicit objectives: 1)."""
    if cfg.epochs is not None:
        return cfg
    if cfg.objective != "actprm":
        return cfg.model_copy(update={"epochs": 1})
    return cfg.model_copy(update={"epochs": MAX_EPOCHS if holding_out else EPOCHS_WITHOUT_HOLDOUT})


def split_holdout(rows: list[dict[str, Any]], share: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train rows, held-out rows): a row is held out iff a hash of its id falls below `share`, so a row keeps
    its side in every round. With fewer than MIN_SPLIT_ROWS on either side, nothing is held out."""
    if share <= 0:
        return rows, []
    held = [random_score(str(r["id"]), seed=-1) < share for r in rows]
    train = [r for r, h in zip(rows, held) if not h]
    out = [r for r, h in zip(rows, held) if h]
    if len(train) < MIN_SPLIT_ROWS or len(out) < MIN_SPLIT_ROWS:
        return rows, []
    return train, out


def resolve_error_weight(cfg: TrainConfig, targets: Sequence[Sequence[float | None]]) -> float:
    """The error steps' loss weight: the number, or for "balanced" the labelled steps' ratio of correct to
    error targets (soft targets count fractionally), between 1 and MAX_ERROR_WEIGHT (1 with no error step)."""
    if cfg.error_weight != "balanced":
        return float(cfg.error_weight)
    flat = np.array([t for ts in targets for t in ts if t is not None], dtype=np.float64)
    wrong = float((1.0 - flat).sum())
    if wrong <= 0:
        return 1.0
    return float(min(MAX_ERROR_WEIGHT, max(1.0, flat.sum() / wrong)))


def first_errors(targets: Sequence[Sequence[float | None]]) -> list[int]:
    """Each row's labelled first error from its step targets (first target < 0.5; -1: none)."""
    out = []
    for ts in targets:
        wrong = [i for i, t in enumerate(ts) if t is not None and t < 0.5]
        out.append(wrong[0] if wrong else -1)
    return out


class EarlyStopping:
    """The stopping rule of a round: after every pass the held-out loss (the training objective on the
    held-out rows, every head); the weights and optimizer moments of the best pass are kept, and training
    stops after `patience` passes without a lower loss. `logits_of()` gives the held-out rows' logits
    (a list of (n_scored, K) tensors); `module` holds the trained parameters."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 logits_of: Callable[[], list[torch.Tensor]], targets: Sequence[Sequence[float | None]],
                 error_weight: float, patience: int):
        self.module, self.optimizer, self.logits_of, self.patience = module, optimizer, logits_of, patience
        self.raw_targets = targets
        self.targets = [torch.tensor([0.0 if t is None else t for t in ts]) for ts in targets]
        self.trained = [torch.tensor([t is not None for t in ts]) for ts in targets]
        self.error_weight = error_weight
        self.best, self.best_epoch, self.bad, self.losses = float("inf"), 0, 0, []
        self.snapshot: tuple[dict, dict] | None = None

    @torch.no_grad()
    def loss(self) -> float:
        logits = torch.cat([z.float() for z in self.logits_of()])
        targets, trained = torch.cat(self.targets), torch.cat(self.trained)
        bce = F.binary_cross_entropy_with_logits(logits, targets.unsqueeze(1).expand_as(logits), reduction="none")
        w = trained.float() * torch.where(targets < 0.5, self.error_weight, 1.0)
        return float((bce * w.unsqueeze(1)).sum() / (w.sum() * logits.shape[1]).clamp_min(1e-8))

    def __call__(self, epoch: int) -> bool:
        """After pass `epoch` (1-based): True to stop."""
        value = self.loss()
        self.losses.append(round(value, 5))
        if value < self.best - 1e-5:
            self.best, self.best_epoch, self.bad = value, epoch, 0
            # on the CPU: a full backbone's weights and moments would double its device memory
            params = {n: p.detach().cpu().clone() for n, p in self.module.named_parameters() if p.requires_grad}
            state = self.optimizer.state_dict()
            moments = {k: {n: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for n, v in st.items()}
                       for k, st in state["state"].items()}
            self.snapshot = (params, {"state": moments, "param_groups": copy.deepcopy(state["param_groups"])})
        else:
            self.bad += 1
        stop = self.bad >= self.patience
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # Ray Train: rank 0 decides
            flag = torch.tensor([int(stop)], device=next(self.module.parameters()).device)
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
        return stop

    @torch.no_grad()
    def restore(self) -> None:
        """Put the best pass's weights and moments back."""
        if self.snapshot is None:
            return
        params, opt = self.snapshot
        named = dict(self.module.named_parameters())
        for n, v in params.items():
            named[n].copy_(v.to(named[n].device))
        self.optimizer.load_state_dict(opt)  # moves the moments to their parameters' devices

    def record(self) -> dict[str, Any]:
        return {"held_out_losses": self.losses, "best_epoch": self.best_epoch,
                "held_out_loss": None if self.snapshot is None else round(self.best, 5)}

    def finish(self, result: RoundResult, heads: torch.nn.Module | None) -> None:
        """After the last pass: the best pass back, its record in `result`, and `heads` (None: not this rank)
        calibrated on the held-out rows."""
        self.restore()
        result.stopping = self.record()
        if heads is not None:
            result.calibration = calibrate_heads(heads, self.logits_of(), self.raw_targets)


def calibrate_heads(heads: torch.nn.Module, logits: list[torch.Tensor],
                    targets: Sequence[Sequence[float | None]]) -> dict[str, Any] | None:
    """Fit the held-out calibration (actprm.calibration) from the held-out rows' raw logits and set it on
    `heads` (None: no held-out step had a target; the heads stay uncalibrated)."""
    probs = [torch.sigmoid(z.float()).numpy() for z in logits]
    record = calibration_record(probs, targets, first_errors(targets))
    heads.calibration = record
    return record


def anchor_penalty(heads: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """mean((phi - phi_init)^2) over all head parameters."""
    total, n = 0.0, 0
    for name, p in heads.named_parameters():
        total = total + ((p.float() - anchor[name]) ** 2).sum()
        n += p.numel()
    return total / n


# --------------------------------------------------------------------------- the round


def set_trainable(model, mode: str, top_layers: int) -> None:
    """full: everything; frozen: heads only; top: the last `top_layers` decoder layers + final norm + heads."""
    backbone = model.backbone
    for p in backbone.parameters():
        p.requires_grad_(mode == "full")
    if mode == "top":
        layers = getattr(backbone, "layers", None)
        if layers is None:
            raise UserError("backbone: top needs a decoder with .layers (Qwen2/Llama-style)")
        for layer in list(layers)[-top_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        norm = getattr(backbone, "norm", None)
        if norm is not None:
            for p in norm.parameters():
                p.requires_grad_(True)
    for p in model.heads.parameters():
        p.requires_grad_(True)


@dataclass
class RoundResult:
    """One training round: its size, its losses, and how it stopped and was calibrated."""

    steps: int = 0  # optimizer steps
    examples: int = 0  # labelled rows trained on
    epochs: int = 0
    seconds: float = 0.0
    # the mean loss of the first and the last tenth of the steps, and every step's
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    resumed_optimizer: bool = False  # the optimizer state of the previous round was loaded
    held_out: int = 0  # labelled rows held out (the stopping rule, the calibration)
    error_weight: float = 1.0
    stopping: dict[str, Any] | None = None  # EarlyStopping.record(): held-out losses, best pass
    calibration: dict[str, Any] | None = None  # the heads' held-out calibration (actprm.calibration)

    def finish(self, steps: int, start: float) -> None:
        """Record the step count, the seconds since `start` and the mean loss of the first and last tenth."""
        self.steps = steps
        self.seconds = time.perf_counter() - start
        if self.losses:
            k = max(1, len(self.losses) // 10)
            self.first_loss = float(np.mean(self.losses[:k]))
            self.last_loss = float(np.mean(self.losses[-k:]))

    def state(self, cfg: TrainConfig, counts: LabelCounts, prev: dict[str, Any], started_from: str,
              **extra: Any) -> dict[str, Any]:
        """The checkpoint's trainer_state.json after this round, continuing `prev` (the start checkpoint's)."""
        index = int(prev.get("round", 0)) + 1
        return {"round": index, "started_from": started_from, **extra, "examples": self.examples,
                "held_out": self.held_out,
                "steps": self.steps, "seconds": round(self.seconds, 2), "epochs": self.epochs,
                "first_loss": self.first_loss, "last_loss": self.last_loss, "losses": self.losses,
                "resumed_optimizer": self.resumed_optimizer, "counts": counts.as_dict(),
                "error_weight": self.error_weight, "stopping": self.stopping, "calibration": self.calibration,
                "config": cfg.model_dump(mode="json"),
                "history": prev.get("history", []) + [{"round": index, "examples": self.examples,
                                                        "steps": self.steps}]}


def train_round(model, tokenizer, examples: list[Example], cfg: TrainConfig, *, device: torch.device,
                anchor: dict[str, torch.Tensor], optimizer_state: dict[str, torch.Tensor] | None = None,
                rank: int = 0, world_size: int = 1, wrap: Callable | None = None, bar=None,
                on_step: Callable[[int, float], None] | None = None, holdout: list[Example] | None = None):
    """Train `model` in place for one round; returns (RoundResult, optimizer).

    With `world_size > 1` each rank trains on examples[rank::world_size] and `wrap` (e.g.
    ray.train.torch.prepare_model) wraps the model for DDP/FSDP. With `holdout` rows, every rank checks the
    held-out loss after each pass (EarlyStopping: the best pass is kept) and rank 0's heads are calibrated
    on them (`model.heads.calibration`); `result.stopping` records it.
    """
    cfg = with_epochs(cfg, bool(holdout))
    result = RoundResult(examples=len(examples), held_out=len(holdout or []))
    model.heads.calibration = None  # train (and stop) on the raw logits
    set_trainable(model, cfg.backbone, cfg.top_layers)
    model.to(device)
    model.train()
    heads = model.heads
    net = wrap(model) if wrap is not None else model
    head_params = [p for p in heads.parameters() if p.requires_grad]
    head_ids = {id(p) for p in head_params}
    backbone_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [{"params": head_params, "lr": cfg.head_lr or cfg.lr, "weight_decay": 0.0}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    if optimizer_state:
        result.resumed_optimizer = load_optimizer_state(model, optimizer, optimizer_state) > 0
    elif cfg.prior_bias:
        set_prior_bias(heads, [e.targets for e in examples])
    error_weight = resolve_error_weight(cfg, [e.targets for e in examples])
    result.error_weight = error_weight
    anchor = {k: v.to(device) for k, v in anchor.items()}

    # every rank gets the same number of examples (DDP needs the same number of steps on each)
    mine = examples[rank::world_size][: len(examples) // world_size]
    lengths = np.array([len(e.input_ids) for e in mine])
    rng = np.random.default_rng(cfg.seed + 1000 * rank)
    keep_gen = torch.Generator().manual_seed(cfg.seed + 7919 * rank)
    amp = autocast(device, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def loss_of(batch: list[int]) -> torch.Tensor:
        ids, sep, answer, targets, trained, rows, weights = collate([mine[i] for i in batch], pad, device)
        keep = torch.rand((len(batch), model.n_heads), generator=keep_gen) < cfg.learning_probability
        with amp:
            logits = net(ids, None, sep, answer)
        loss = actprm_loss(logits, targets, trained, rows, weights, keep.to(device), error_weight)
        return loss + cfg.anchor_lambda * anchor_penalty(heads, anchor)

    stopping = None
    if holdout:
        def holdout_logits() -> list[torch.Tensor]:
            model.eval()
            out = []
            with torch.no_grad(), amp:
                for k in range(0, len(holdout), cfg.batch_size):
                    part = holdout[k:k + cfg.batch_size]
                    ids, sep, answer, *_ = collate(part, pad, device)
                    z = model(ids, None, sep, answer).float().cpu()
                    sizes = [len(e.targets) for e in part]
                    out.extend(torch.split(z, sizes))
            model.train()
            return out

        stopping = EarlyStopping(model, optimizer, holdout_logits, [e.targets for e in holdout], error_weight,
                                 cfg.patience)
    run_epochs(model, optimizer, cfg, lengths, cfg.batch_size, rng, loss_of, result, bar=bar, on_step=on_step,
               after_epoch=stopping)
    if stopping is not None:
        stopping.finish(result, heads if rank == 0 else None)
        model.eval()
    return result, optimizer


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast when `cfg.dtype` resolves to bfloat16 on `device` (actprm.precision); else a no-op."""
    return precision.autocast(cfg, device)


def run_epochs(model, optimizer: torch.optim.Optimizer, cfg: TrainConfig, lengths: np.ndarray, batch_size: int,
               rng: np.random.Generator, loss_of: Callable[[list[int]], torch.Tensor], result: RoundResult, *,
               bar=None, on_step: Callable[[int, float], None] | None = None,
               after_epoch: Callable[[int], bool] | None = None) -> None:
    """The optimizer loop of a round: `cfg.epochs` epochs of length-bucketed batches (`length_batches` of
    `lengths`), `cfg.grad_accum` micro-batches per step, `loss_of(indices)` each micro-batch's loss; the
    linear schedule over the round's steps (`base_lr` of each parameter group), gradient clipping over
    the trainable parameters. Fills `result` (losses, epochs, steps, seconds); leaves `model` in eval mode."""
    micro = max(1, math.ceil(len(lengths) / batch_size))
    per_epoch = max(1, micro // cfg.grad_accum)
    lr_scale = linear_schedule(per_epoch * cfg.epochs, cfg.warmup_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    step = 0
    for epoch in range(cfg.epochs):
        batches = list(length_batches(lengths, batch_size, rng))[: per_epoch * cfg.grad_accum]
        for j in range(0, len(batches), cfg.grad_accum):
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_scale(step)
            optimizer.zero_grad(set_to_none=True)
            group = batches[j : j + cfg.grad_accum]
            loss_value = 0.0
            for b in group:
                loss = loss_of(b)
                (loss / len(group)).backward()
                loss_value += loss.item() / len(group)
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            step += 1
            result.losses.append(round(loss_value, 5))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", steps_s=f"{step / (time.perf_counter() - start):.1f}")
            if on_step is not None:
                on_step(step, loss_value)
        result.epochs = epoch + 1
        if after_epoch is not None and after_epoch(epoch + 1):
            break
    model.eval()
    result.finish(step, start)


def linear_schedule(total: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of optimizer step `step`: linear warm-up, then linear decay to 0 at `total`."""
    warmup = min(warmup_steps, max(0, total - 1))

    def lr_scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))

    return lr_scale


def steps_per_round(n_examples: int, cfg: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps of a round at most (the stopping rule may end it sooner)."""
    cfg = with_epochs(cfg, cfg.holdout > 0)
    micro = max(1, math.ceil((n_examples // world_size) / cfg.batch_size))
    return max(1, micro // cfg.grad_accum) * cfg.epochs


# --------------------------------------------------------------------------- the implicit PRM's round


def build_units(rows: list[dict[str, Any]], encoder, counts, objective: str, seed: int = 0):
    """(examples, units): examples as `Example` with `targets == [outcome]`; a unit is the
    examples one loss term reads (one for CE, a (right, wrong) pair for DPO)."""
    kept, outcomes = [], []
    for row in rows:
        ok = outcome_of(row)
        if ok is None:
            counts.invalid_label += 1
            continue
        kept.append(row)
        outcomes.append(ok)
    encoded = encoder.encode([r["problem"] for r in kept], [r["steps"] for r in kept])
    examples, problems, correct = [], [], []
    for row, ok, enc in zip(kept, outcomes, encoded):
        if enc.error is not None:
            counts.too_long += 1
            continue
        counts.truncated += int(enc.truncated)
        examples.append(Example(enc.input_ids, enc.sep_positions, [1.0 if ok else 0.0],
                                float(row.get("label_weight") or 1.0), enc.answer_start))
        problems.append(row["problem"])
        correct.append(ok)
    if objective == "implicit-dpo":
        units = [list(p) for p in dpo_pairs(problems, correct, seed)]
    else:
        units = [[i] for i in range(len(examples))]
    return examples, units


def train_implicit_round(model: ImplicitPRM, tokenizer, examples: list, units: list[list[int]], cfg, *,
                         device: torch.device, optimizer_state: dict[str, torch.Tensor] | None = None,
                         bar=None):
    """Train pi_theta in place for one round on outcome labels; returns (RoundResult, optimizer)."""
    cfg = with_epochs(cfg, False)
    result = RoundResult(examples=len(examples))
    model.to(device)
    model.train()
    params = [p for p in model.backbone.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW([{"params": params, "lr": cfg.lr, "weight_decay": cfg.weight_decay}],
                                  betas=(0.9, 0.999))
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    if optimizer_state:
        result.resumed_optimizer = load_optimizer_state(model, optimizer, optimizer_state) > 0
    per_unit = max(1, cfg.batch_size // max(1, len(units[0]) if units else 1))
    lengths = np.array([max(len(examples[i].input_ids) for i in u) for u in units])
    amp = autocast(device, cfg)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def loss_of(batch: list[int]) -> torch.Tensor:
        ids, sep, answer, targets, _trained, _rows, weights = collate(
            [examples[i] for u in batch for i in units[u]], pad, device)
        with amp:
            rewards = model.outcome_rewards(ids, sep, answer)
        if cfg.objective == "implicit-dpo":
            return implicit_dpo_loss(rewards, weights)
        return implicit_ce_loss(rewards, targets, weights)

    run_epochs(model, optimizer, cfg, lengths, per_unit, np.random.default_rng(cfg.seed), loss_of, result, bar=bar)
    return result, optimizer


def implicit_steps(n_units: int, unit_size: int, cfg) -> int:
    cfg = with_epochs(cfg, False)
    per_unit = max(1, cfg.batch_size // unit_size)
    return max(1, math.ceil(n_units / per_unit) // cfg.grad_accum) * cfg.epochs


def train_and_save_implicit(cfg: TrainConfig, rows: list[dict[str, Any]], counts: LabelCounts,
                            device: torch.device, *, rank: int = 0, world_size: int = 1, wrap: Callable | None = None,
                            progress: bool = False) -> TrainResult:
    """`train_and_save` for the implicit objectives: load, train one round, save."""
    model, tokenizer = load_implicit(cfg.model, "cpu", beta=cfg.beta, reference=cfg.reference)
    model.to(torch.float32)
    opt_state, prev = read_optimizer_state(cfg.model), read_trainer_state(cfg.model)
    encoder = TrajectoryEncoder(tokenizer, max_length=cfg.max_length or model.max_length)
    examples, units = build_units(rows, encoder, counts, cfg.objective, cfg.seed)
    if not units:
        what = "no (right, wrong) pair" if cfg.objective == "implicit-dpo" else "no row with an outcome label"
        raise NothingToTrain(f"nothing to train on: {what} survived ({counts.labelled} labelled rows, "
                        f"{counts.too_long} too long, {counts.invalid_label} without an outcome)")
    torch.manual_seed(cfg.seed)
    with progress_bar(implicit_steps(len(units), len(units[0]), cfg), "train", progress) as bar:
        result, optimizer = train_implicit_round(model, tokenizer, examples, units, cfg, device=device,
                                                 optimizer_state=opt_state, bar=bar)
    state = result.state(cfg, counts, prev, cfg.model or SHIPPED_BACKBONE, workers=1, objective=cfg.objective,
                         beta=model.beta, reference=model.implicit_config()["reference"], units=len(units))
    model.to("cpu")
    out = Path(cfg.output)
    save_checkpoint(out, model, tokenizer, optimizer, {}, state)
    return TrainResult(counts, result, out, state["round"])


# --------------------------------------------------------------------------- one round, saved


@dataclass
class TrainResult(JobResult):
    counts: LabelCounts
    round: RoundResult
    output: Path
    round_index: int

    def summary_line(self) -> str:
        c, r = self.counts, self.round
        skipped = [f"{n} {what}" for n, what in ((c.failed_annotations, "failed annotations"),
                                                  (c.without_annotation, "unannotated"),
                                                  (c.too_long, "too long"), (c.invalid_label, "bad label")) if n]
        rate = r.steps / r.seconds if r.seconds > 0 else 0.0
        held = ""
        if r.held_out:
            best = (r.stopping or {}).get("best_epoch")
            cal = f", decision threshold {r.calibration['threshold']:.2f}" if r.calibration else ""
            held = f", {r.held_out} held out (best pass {best} of {r.epochs}{cal})"
        return (f"train: round {self.round_index}, {r.examples + r.held_out} labelled trajectories"
                + (f" ({', '.join(skipped)} skipped)" if skipped else "")
                + f", {r.steps} steps in {r.seconds:.1f}s ({rate:.1f} steps/s), "
                f"loss {r.first_loss:.3f} -> {r.last_loss:.3f}{held} -> {self.output}")


def train_ensemble_and_save(cfg: TrainConfig, rows: list[dict[str, Any]], counts: LabelCounts,
                            device: torch.device, *, rank: int = 0, world_size: int = 1,
                            wrap: Callable | None = None, progress: bool = False) -> TrainResult | None:
    """The ActPRM objective: load the start checkpoint, train the ensemble one round, save (rank 0)."""
    model, tokenizer, anchor, opt_state, prev = load_checkpoint(cfg.model, device)
    encoder = encoder_for(model, tokenizer, max_length=cfg.max_length or model.max_length,
                          system_prompt=cfg.system_prompt)  # the model's own format
    train_rows, held_rows = split_holdout(rows, cfg.holdout)
    examples = build_examples(train_rows, encoder, counts)
    holdout = build_examples(held_rows, encoder, counts)
    if len(examples) < world_size:
        raise NothingToTrain("nothing to train on: no labelled trajectory survived the join "
                             f"({counts.labelled} labelled rows, {counts.too_long} too long)")
    torch.manual_seed(cfg.seed)
    with progress_bar(steps_per_round(len(examples), cfg, world_size), "train", progress and rank == 0) as bar:
        result, optimizer = train_round(model, tokenizer, examples, cfg, device=device, anchor=anchor,
                                        optimizer_state=opt_state, rank=rank, world_size=world_size,
                                        wrap=wrap, bar=bar, holdout=holdout)
    if rank != 0:
        return None
    state = result.state(cfg, counts, prev, cfg.model or DEFAULT_MODEL_NAME, workers=world_size,
                         dtype=precision.dtype_name(precision.training_dtype(cfg, device)))
    model.to("cpu")
    out = Path(cfg.output)
    save_checkpoint(out, model, tokenizer, optimizer, anchor, state)
    return TrainResult(counts, result, out, state["round"])


#: objective -> its round (load, train, save). The implicit ones run in-process (one worker).
OBJECTIVES: dict[str, Callable[..., TrainResult | None]] = {
    "actprm": train_ensemble_and_save,
    "implicit-ce": train_and_save_implicit,
    "implicit-dpo": train_and_save_implicit,
}


def train_and_save(cfg: TrainConfig, rows: list[dict[str, Any]], counts: LabelCounts, device: torch.device, *,
                   rank: int = 0, world_size: int = 1, wrap: Callable | None = None,
                   progress: bool = False) -> TrainResult | None:
    """One round of `cfg.objective` from `cfg.model` to `cfg.output` (rank 0 saves and returns the result).
    The train job, its Ray Train workers and the loop all call this. Raises NothingToTrain."""
    return OBJECTIVES[cfg.objective](cfg, rows, counts, device, rank=rank, world_size=world_size, wrap=wrap,
                                     progress=progress)


def result_from_checkpoint(out: Path) -> TrainResult:
    """The TrainResult of a round from the trainer_state.json it wrote (for recipes whose workers trained)."""
    state = read_trainer_state(str(out))
    r = RoundResult(steps=state["steps"], examples=state["examples"], epochs=state["epochs"],
                    seconds=state["seconds"], first_loss=state["first_loss"], last_loss=state["last_loss"],
                    losses=state["losses"], resumed_optimizer=state["resumed_optimizer"],
                    held_out=state.get("held_out", 0), error_weight=state.get("error_weight", 1.0),
                    stopping=state.get("stopping"), calibration=state.get("calibration"))
    return TrainResult(LabelCounts(**state["counts"]), r, out, state["round"])
