"""One PRM training round with the ActPRM objective (plain torch; no Ray).

    labelled rows + checkpoint  ->  new checkpoint (+ optimizer state, anchor heads, summary)

The objective (../shared/REFERENCE.md, ActPRM): binary cross-entropy with logits for
every head at every labelled separator - steps before the earliest error are 1, the
earliest error is 0, later steps are not trained, every step of a correct trajectory is 1;
soft `step_labels` replace these targets where a row has them. Each (head, trajectory)
pair is kept with probability `learning_probability`; each row counts `label_weight`
times; plus ``anchor_lambda * mean((phi - phi_init)^2)`` over the head parameters against
the heads the first round started from (stored in the checkpoint as heads_init.safetensors,
so every later round anchors to the same point).

Labels come only from the labelled rows (annotations joined by id, see `join_annotations`):
a ground-truth column the corpus may carry (`first_error_step`) is never read here.

Checkpoint layout (DIR): the PRM as `EnsemblePRM.save_pretrained` writes it, plus
`optimizer.safetensors` (AdamW moments by parameter name), `heads_init.safetensors` and
`trainer_state.json` (round, steps, losses, counts, config). A round started from a
checkpoint that has optimizer state continues those moments; the learning-rate schedule
(linear warm-up, linear decay) runs over each round's own steps.

`pipelines/train.py` runs the same `train_round` under Ray Train (DDP/FSDP workers).

`objective: implicit-ce | implicit-dpo` trains an implicit PRM (a causal LM) from response-level
labels instead (`actprm.implicit`; `train_and_save` hands over to it): the outcome of a labelled
row (label -1 = right), or, from `--trajectories` alone, the outcome checker (actprm.outcome).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.io.readers import iter_batches, list_files, open_corpus
from actprm.io.writers import replaced_dir
from actprm.progress import progress_bar
from actprm.scoring import EncodedTrajectory, TrajectoryEncoder

OPTIMIZER_NAME = "optimizer.safetensors"
ANCHOR_NAME = "heads_init.safetensors"
STATE_NAME = "trainer_state.json"


# --------------------------------------------------------------------------- labels


@dataclass
class LabelCounts:
    annotations: int = 0
    labelled: int = 0
    failed_annotations: int = 0
    without_trajectory: int = 0
    without_annotation: int = 0
    duplicate_annotations: int = 0
    invalid_label: int = 0
    too_long: int = 0
    truncated: int = 0
    error_cut_off: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def label_source(judge: str | None) -> str:
    for source in ("verifier", "outcome", "rollout"):  # outcome: actprm.outcome's checker; rollout: prover values
        if (judge or "").startswith(source):
            return source
    return "judge"


def read_annotations(paths: Sequence[str], counts: LabelCounts) -> dict[str, dict[str, Any]]:
    """id -> annotation row, failed ones dropped (and counted); the first of duplicate ids wins."""
    out: dict[str, dict[str, Any]] = {}
    for path in list_files(list(paths)):
        try:
            names = pq.read_schema(path).names  # per-step columns: rollout annotations (older tables lack them)
            table = pq.read_table(path, columns=["id", "first_error_step", "judge", "agreement"]
                                  + [c for c in ("step_labels", "step_progress") if c in names])
        except Exception as exc:  # noqa: BLE001 - a bad file is a user error, one line
            raise UserError(f"{path}: not an annotations table ({' '.join(str(exc).split())[:160]})") from None
        for row in table.to_pylist():
            counts.annotations += 1
            if row["first_error_step"] is None:
                counts.failed_annotations += 1
            elif row["id"] in out:
                counts.duplicate_annotations += 1
            else:
                out[row["id"]] = row
    return out


def labelled_row(traj: dict[str, Any], ann: dict[str, Any], label_weight: float | str = 1.0) -> dict[str, Any]:
    """A labelled-table row from a trajectory and its (successful) annotation: the earliest-error label,
    the per-step labels and progress of rollout annotations, the weight (a number, or "agreement")."""
    weight = (float(ann.get("agreement") if ann.get("agreement") is not None else 1.0)
              if label_weight == "agreement" else float(label_weight))
    return {"id": traj["id"], "problem": traj["problem"], "steps": traj["steps"],
            "label_first_error": int(ann["first_error_step"]), "label_source": label_source(ann.get("judge")),
            "step_labels": ann.get("step_labels"), "step_progress": ann.get("step_progress"), "label_weight": weight}


def join_annotations(trajectory_paths: Sequence[str], annotation_paths: Sequence[str], counts: LabelCounts,
                     batch_rows: int = 2048, label_weight: float | str = 1.0) -> list[dict[str, Any]]:
    """Labelled rows (data_schemas/labelled.yaml) from trajectories x annotations, joined by id.

    Only `problem` and `steps` are taken from the trajectories: their `first_error_step`
    (ground truth some corpora carry) never becomes a label.  `label_weight`: every row's
    weight, or "agreement" for the share of the judge's votes that agree with the label
    (1.0 for one sample; `actprm judge-check` suggests a fixed weight from a judge's F1).
    """
    annotations = read_annotations(annotation_paths, counts)
    seen: set[str] = set()
    rows = []
    for batch in iter_batches(open_corpus(list(trajectory_paths)), batch_rows=batch_rows):
        for traj in batch.valid:
            ann = annotations.get(traj["id"])
            if ann is None:
                counts.without_annotation += 1
                continue
            seen.add(traj["id"])
            label = int(ann["first_error_step"])
            if not -1 <= label < len(traj["steps"]):
                counts.invalid_label += 1
                continue
            rows.append(labelled_row(traj, ann, label_weight))
    counts.without_trajectory = len(set(annotations) - seen)
    counts.labelled = len(rows)
    return rows


def read_labelled(paths: Sequence[str], counts: LabelCounts) -> list[dict[str, Any]]:
    rows = []
    for path in list_files(list(paths)):
        try:
            rows.extend(pq.read_table(path).to_pylist())
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{path}: not a labelled table ({' '.join(str(exc).split())[:160]})") from None
    for row in rows:
        missing = {"id", "problem", "steps", "label_first_error"} - set(row)
        if missing:
            raise UserError(f"labelled table lacks column(s) {sorted(missing)}")
    counts.labelled = len(rows)
    return rows


def step_targets(label: int, n_steps: int, soft: Sequence[float | None] | None = None) -> list[float | None]:
    """Per-step training targets; None = not trained. Soft labels win where given."""
    if soft is not None:
        return [None if s is None else float(s) for s in soft[:n_steps]] + [None] * max(0, n_steps - len(soft))
    if label == -1:
        return [1.0] * n_steps
    return [1.0] * label + [0.0] + [None] * (n_steps - label - 1)


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
    heads.b3.fill_(math.log(p / (1 - p)))
    return p


def anchor_penalty(heads: torch.nn.Module, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """mean((phi - phi_init)^2) over all head parameters."""
    total, n = 0.0, 0
    for name, p in heads.named_parameters():
        total = total + ((p.float() - anchor[name]) ** 2).sum()
        n += p.numel()
    return total / n


# --------------------------------------------------------------------------- optimizer state


def optimizer_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW moments keyed by parameter name (safetensors-friendly: tensors only)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            n = names[id(p)]
            out[f"{n}::exp_avg"] = st["exp_avg"].detach().cpu().contiguous()
            out[f"{n}::exp_avg_sq"] = st["exp_avg_sq"].detach().cpu().contiguous()
            out[f"{n}::step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    return out


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, torch.Tensor]) -> int:
    """Put saved moments back; returns how many parameters got state."""
    loaded = 0
    for n, p in model.named_parameters():
        if f"{n}::exp_avg" not in state or not p.requires_grad:
            continue
        optimizer.state[p] = {
            "step": torch.tensor(float(state[f"{n}::step"].item())),
            "exp_avg": state[f"{n}::exp_avg"].to(p.device, p.dtype),
            "exp_avg_sq": state[f"{n}::exp_avg_sq"].to(p.device, p.dtype),
        }
        loaded += 1
    return loaded


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
    steps: int = 0
    examples: int = 0
    epochs: int = 0
    seconds: float = 0.0
    first_loss: float = float("nan")
    last_loss: float = float("nan")
    losses: list[float] = field(default_factory=list)
    resumed_optimizer: bool = False

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
                "steps": self.steps, "seconds": round(self.seconds, 2), "epochs": self.epochs,
                "first_loss": self.first_loss, "last_loss": self.last_loss, "losses": self.losses,
                "resumed_optimizer": self.resumed_optimizer, "counts": counts.as_dict(),
                "config": cfg.model_dump(mode="json"),
                "history": prev.get("history", []) + [{"round": index, "examples": self.examples,
                                                        "steps": self.steps}]}


def train_round(model, tokenizer, examples: list[Example], cfg: TrainConfig, *, device: torch.device,
                anchor: dict[str, torch.Tensor], optimizer_state: dict[str, torch.Tensor] | None = None,
                rank: int = 0, world_size: int = 1, wrap: Callable | None = None, bar=None,
                on_step: Callable[[int, float], None] | None = None):
    """Train `model` in place for one round; returns (RoundResult, optimizer).

    With `world_size > 1` each rank trains on examples[rank::world_size] and `wrap` (e.g.
    ray.train.torch.prepare_model) wraps the model for DDP/FSDP.
    """
    result = RoundResult(examples=len(examples))
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
        loss = actprm_loss(logits, targets, trained, rows, weights, keep.to(device), cfg.error_weight)
        return loss + cfg.anchor_lambda * anchor_penalty(heads, anchor)

    run_epochs(model, optimizer, cfg, lengths, cfg.batch_size, rng, loss_of, result, bar=bar, on_step=on_step)
    return result, optimizer


def autocast(device: torch.device, cfg: TrainConfig):
    """bf16 autocast on CUDA when `cfg.bf16`; a no-op context otherwise (CPU trains in fp32)."""
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_epochs(model, optimizer: torch.optim.Optimizer, cfg: TrainConfig, lengths: np.ndarray, batch_size: int,
               rng: np.random.Generator, loss_of: Callable[[list[int]], torch.Tensor], result: RoundResult, *,
               bar=None, on_step: Callable[[int, float], None] | None = None) -> None:
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
    micro = max(1, math.ceil((n_examples // world_size) / cfg.batch_size))
    return max(1, micro // cfg.grad_accum) * cfg.epochs


# --------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | None, device: torch.device):
    """(model, tokenizer, anchor heads, optimizer state or None, trainer state or {})."""
    from safetensors.torch import load_file

    from actprm.score import load_scoring_model

    model, tokenizer = load_scoring_model(path, "cpu")
    model.to(torch.float32)
    src = Path(path) if path else None
    anchor = None
    if src is not None and (src / ANCHOR_NAME).is_file():
        anchor = load_file(str(src / ANCHOR_NAME))
    if anchor is None:
        anchor = {k: v.detach().float().clone() for k, v in model.heads.state_dict().items()}
    opt = load_file(str(src / OPTIMIZER_NAME)) if src is not None and (src / OPTIMIZER_NAME).is_file() else None
    state = json.loads((src / STATE_NAME).read_text()) if src is not None and (src / STATE_NAME).is_file() else {}
    return model, tokenizer, anchor, opt, state


def save_checkpoint(out: Path, model, tokenizer, optimizer, anchor: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> None:
    """Write the checkpoint beside `out`, then move it into place (a killed run leaves no half checkpoint).

    Whether `out` may be replaced is decided before training (check_train_paths).
    """
    from safetensors.torch import save_file

    with replaced_dir(out) as staging:
        model.save_pretrained(staging, tokenizer=tokenizer)
        save_file(optimizer_state_dict(model, optimizer), str(staging / OPTIMIZER_NAME))
        save_file({k: v.detach().cpu().contiguous() for k, v in anchor.items()}, str(staging / ANCHOR_NAME))
        (staging / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")


# --------------------------------------------------------------------------- the job


@dataclass
class TrainResult:
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
        return (f"train: round {self.round_index}, {r.examples} labelled trajectories"
                + (f" ({', '.join(skipped)} skipped)" if skipped else "")
                + f", {r.steps} steps in {r.seconds:.1f}s ({rate:.1f} steps/s), "
                f"loss {r.first_loss:.3f} -> {r.last_loss:.3f} -> {self.output}")


def check_train_paths(cfg: TrainConfig) -> Path:
    if not cfg.output:
        raise UserError("no output: pass --output DIR")
    if cfg.objective != "actprm" and cfg.workers > 1:
        raise UserError(f"--objective {cfg.objective} trains in-process: use --workers 1")
    if cfg.labelled:
        if cfg.trajectories or cfg.annotations:
            raise UserError("pass either --labelled, or --trajectories with --annotations, not both")
    elif cfg.objective != "actprm" and cfg.trajectories:
        pass  # the implicit objectives: outcome labels from the trajectories alone (actprm.outcome)
    elif not (cfg.trajectories and cfg.annotations):
        raise UserError("no labels: pass --trajectories PATH and --annotations PATH (or --labelled PATH)")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out}: exists; choose another --output or pass --overwrite")
    return out


def load_rows(cfg: TrainConfig, counts: LabelCounts) -> list[dict[str, Any]]:
    if cfg.labelled:
        return read_labelled(cfg.labelled, counts)
    if cfg.objective != "actprm" and not cfg.annotations:  # outcome labels: the trajectories themselves
        rows = [r for b in iter_batches(open_corpus(list(cfg.trajectories)), batch_rows=cfg.batch_rows)
                for r in b.valid]
        counts.labelled = len(rows)
        return rows
    return join_annotations(cfg.trajectories, cfg.annotations, counts, batch_rows=cfg.batch_rows,
                            label_weight=cfg.label_weight)


def train_and_save(cfg: TrainConfig, rows: list[dict[str, Any]], counts: LabelCounts, device: torch.device, *,
                   rank: int = 0, world_size: int = 1, wrap: Callable | None = None,
                   progress: bool = False) -> TrainResult | None:
    """Load the start checkpoint, train one round, save (rank 0). Shared by run_train and pipelines/train.py."""
    if cfg.objective != "actprm":  # the implicit PRM's objectives (outcome labels only; in-process)
        from actprm.implicit import train_and_save_implicit

        return train_and_save_implicit(cfg, rows, counts, device, progress=progress)
    model, tokenizer, anchor, opt_state, prev = load_checkpoint(cfg.model, device)
    encoder = TrajectoryEncoder(tokenizer, max_length=cfg.max_length or model.max_length)
    examples = build_examples(rows, encoder, counts)
    if len(examples) < world_size:
        raise UserError("nothing to train on: no labelled trajectory survived the join "
                        f"({counts.labelled} labelled rows, {counts.too_long} too long)")
    torch.manual_seed(cfg.seed)
    with progress_bar(steps_per_round(len(examples), cfg, world_size), "train", progress and rank == 0) as bar:
        result, optimizer = train_round(model, tokenizer, examples, cfg, device=device, anchor=anchor,
                                        optimizer_state=opt_state, rank=rank, world_size=world_size,
                                        wrap=wrap, bar=bar)
    if rank != 0:
        return None
    state = result.state(cfg, counts, prev, cfg.model or "actprm/assets/prm", workers=world_size)
    model.to("cpu")
    out = Path(cfg.output)
    save_checkpoint(out, model, tokenizer, optimizer, anchor, state)
    return TrainResult(counts, result, out, state["round"])


def result_from_checkpoint(out: Path) -> TrainResult:
    """The TrainResult of a round from the trainer_state.json it wrote (for recipes whose workers trained)."""
    state = json.loads((out / STATE_NAME).read_text())
    r = RoundResult(steps=state["steps"], examples=state["examples"], epochs=state["epochs"],
                    seconds=state["seconds"], first_loss=state["first_loss"], last_loss=state["last_loss"],
                    losses=state["losses"], resumed_optimizer=state["resumed_optimizer"])
    return TrainResult(LabelCounts(**state["counts"]), r, out, state["round"])


def run_train(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    """`actprm train` in-process: join labels, train one round, write the new checkpoint."""
    check_train_paths(cfg)
    from actprm.score import resolve_device

    device = torch.device(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    counts = LabelCounts()
    rows = load_rows(cfg, counts)
    result = train_and_save(cfg, rows, counts, device, progress=progress)
    assert result is not None
    return result
