"""Cached backbone outputs: rounds that cost seconds with a frozen backbone.

With a frozen backbone, what the heads read for a trajectory never changes between rounds:
the separators' hidden states plus the step features (:meth:`EnsemblePRM.head_inputs`). This
module computes them once per (model, row) and scores and trains the heads on them:

* :func:`extract_head_inputs` runs the backbone over rows (the scorer's encoding, truncation and
  batching) and returns :class:`HeadInputs`: one ``(n_separators_total, F)`` float32 matrix, row
  offsets, token lengths and step counts, the row ids and the :func:`model_fingerprint` of the
  backbone they came from. :meth:`HeadInputs.save` / :meth:`HeadInputs.load` keep it on disk
  (safetensors, no pickle); :class:`HeadInputStore` keeps caches in memory keyed by fingerprint
  and row id and computes only the rows it lacks.
* :func:`score_cached` gives each row's per-step head probabilities ``(n_scored_steps, K)``, the
  same as :func:`actprm.scoring.score_trajectories` (within float noise, ~1e-6).
* :func:`train_heads_cached` is ``actprm.trainer.train_round`` with ``backbone: frozen`` on the
  cache: the same ActPRM BCE, ``learning_probability`` mask, anchor, AdamW groups, schedule,
  batch order and mask draws (so the same heads within float noise), plus opt-in options
  (``error_weight``, ``feature_dropout``, ``bootstrap``) the uncached trainer does not have.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from actprm import precision
from actprm.calibration import check_record
from actprm.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state_dict,
    save_checkpoint,
)
from actprm.labels import LabelCounts, step_targets
from actprm.model import HEADS_NAME, PRM_CONFIG_NAME, EnsembleHeads
from actprm.scoring import ScoreResult, _encoder, _pad_id, _resolve_device, plan_batches
from actprm.shipped import DEFAULT_MODEL_NAME
from actprm.trainer import (
    EarlyStopping,
    NothingToTrain,
    RoundResult,
    TrainResult,
    actprm_loss,
    anchor_penalty,
    length_batches,
    linear_schedule,
    resolve_error_weight,
    run_epochs,
    set_prior_bias,
    split_holdout,
    train_and_save,
    with_epochs,
)

CACHE_FORMAT = "actprm-head-inputs-v1"


def model_fingerprint(model, max_length: int | None = None) -> str:
    """16 hex digits of SHA-256 over the backbone's weights, the step features, the separator and max_length:
    two models with the same fingerprint give the heads the same inputs."""
    h = hashlib.sha256()
    meta = {"step_features": list(getattr(model, "step_features", ())), "separator": model.separator_token_id,
            "max_length": int(max_length or model.max_length), "format": CACHE_FORMAT}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, t in sorted(model.backbone.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class HeadInputs:
    """The heads' inputs of a set of rows: row ``i``'s scored steps are ``x[offsets[i]:offsets[i+1]]``."""

    ids: list[str]
    x: torch.Tensor  # (S, F) float32
    offsets: np.ndarray  # (N+1,) int64
    lengths: np.ndarray  # (N,) token length of each encoded row (the trainer's length buckets)
    n_steps: np.ndarray  # (N,) steps of each row (scored or not)
    errors: list[str | None]  # why a row could not be encoded (too long), else None
    fingerprint: str
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {rid: i for i, rid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_scored(self) -> np.ndarray:
        return np.diff(self.offsets)

    def index(self, ids: Sequence[str]) -> np.ndarray:
        """Positions of `ids` (KeyError for an id the cache lacks)."""
        return np.array([self._index[r] for r in ids], dtype=np.int64)

    def rows(self, idx: Sequence[int]) -> HeadInputs:
        """A cache of the rows at positions `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        parts = [self.x[self.offsets[i]:self.offsets[i + 1]] for i in idx]
        counts = np.diff(self.offsets)[idx] if len(idx) else np.zeros(0, np.int64)
        x = torch.cat(parts) if parts else self.x[:0]
        return HeadInputs([self.ids[i] for i in idx], x, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                          self.lengths[idx], self.n_steps[idx], [self.errors[i] for i in idx], self.fingerprint)

    @staticmethod
    def concat(parts: Sequence[HeadInputs]) -> HeadInputs:
        if len({p.fingerprint for p in parts}) > 1:
            raise ValueError("cannot join head inputs of different models")
        counts = np.concatenate([np.diff(p.offsets) for p in parts])
        return HeadInputs([r for p in parts for r in p.ids], torch.cat([p.x for p in parts]),
                          np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                          np.concatenate([p.lengths for p in parts]), np.concatenate([p.n_steps for p in parts]),
                          [e for p in parts for e in p.errors], parts[0].fingerprint)

    # ---- disk
    def save(self, path: str | Path) -> Path:
        """One safetensors file: the tensors, and ids / errors / fingerprint in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"x": self.x.contiguous(), "offsets": torch.from_numpy(self.offsets),
                   "lengths": torch.from_numpy(self.lengths), "n_steps": torch.from_numpy(self.n_steps)}
        meta = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "ids": json.dumps(self.ids),
                "errors": json.dumps(self.errors)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> HeadInputs:
        """Read a :meth:`save` file; ValueError when `fingerprint` is given and differs (another model)."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"{path}: not an actprm head-inputs file")
            if fingerprint is not None and meta["fingerprint"] != fingerprint:
                raise ValueError(f"{path}: cached for model {meta['fingerprint']}, not {fingerprint}")
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(json.loads(meta["ids"]), t["x"], t["offsets"].numpy(), t["lengths"].numpy(),
                   t["n_steps"].numpy(), json.loads(meta["errors"]), meta["fingerprint"])


def extract_head_inputs(model, tokenizer, rows: Sequence[dict[str, Any]], *, batch_tokens: int = 2048,
                        max_length: int | None = None, device: str | torch.device | None = None,
                        fingerprint: str | None = None, progress: bool = False,
                        system_prompt: str | None = None) -> HeadInputs:
    """Run the backbone once over `rows` (dicts with id, problem, steps) and keep what the heads read
    (encoded as the scorer does: `system_prompt` None is the PRM's own)."""

    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    enc = _encoder(model, tokenizer, max_length, 128, system_prompt).encode([r["problem"] for r in rows],
                                                                            [r["steps"] for r in rows])
    fingerprint = fingerprint or model_fingerprint(model, max_length)
    dev = _resolve_device(model, device)
    pad = _pad_id(tokenizer)
    per_row: list[torch.Tensor | None] = [None] * len(rows)
    live = [i for i, e in enumerate(enc) if e.error is None and e.n_scored_steps > 0]
    width = model.heads.hidden_size
    batches = plan_batches([len(enc[i]) for i in live], batch_tokens)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for n, batch in enumerate(batches):
                idx = [live[b] for b in batch]
                T = max(len(enc[i]) for i in idx)
                ids = torch.full((len(idx), T), pad, dtype=torch.long)
                sep = torch.zeros((len(idx), T), dtype=torch.bool)
                for r, i in enumerate(idx):
                    ids[r, : len(enc[i])] = torch.tensor(enc[i].input_ids)
                    sep[r, enc[i].sep_positions] = True
                answer = torch.tensor([enc[i].answer_start for i in idx], dtype=torch.long)
                x = model.head_inputs(ids.to(dev), None, sep.to(dev), answer.to(dev)).float().cpu()
                row = 0
                for i in idx:
                    k = enc[i].n_scored_steps
                    per_row[i] = x[row:row + k].clone()
                    row += k
                if progress and n % 50 == 0:
                    print(f"head inputs: batch {n + 1}/{len(batches)}", flush=True)
    finally:
        model.train(was_training)
    parts = [p if p is not None else torch.zeros((0, width)) for p in per_row]
    counts = np.array([len(p) for p in parts], dtype=np.int64)
    return HeadInputs([str(r["id"]) for r in rows], torch.cat(parts) if parts else torch.zeros((0, width)),
                      np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                      np.array([len(e) for e in enc], dtype=np.int64),
                      np.array([e.n_steps for e in enc], dtype=np.int64), [e.error for e in enc], fingerprint)


class HeadInputStore:
    """Head inputs kept in memory by (model fingerprint, row id); :meth:`get` computes only missing rows."""

    def __init__(self) -> None:
        self._caches: dict[str, list[HeadInputs]] = {}

    def get(self, model, tokenizer, rows: Sequence[dict[str, Any]], **kwargs: Any) -> HeadInputs:
        fp = model_fingerprint(model, kwargs.get("max_length"))
        have = {rid: (c, i) for c in self._caches.get(fp, []) for rid, i in c._index.items()}
        missing = [r for r in rows if str(r["id"]) not in have]
        if missing:
            new = extract_head_inputs(model, tokenizer, missing, fingerprint=fp, **kwargs)
            self._caches.setdefault(fp, []).append(new)
            have.update({rid: (new, i) for rid, i in new._index.items()})
        return HeadInputs.concat([have[str(r["id"])][0].rows([have[str(r["id"])][1]]) for r in rows]) \
            if rows else extract_head_inputs(model, tokenizer, [], fingerprint=fp, **kwargs)


# --------------------------------------------------------------------------- scoring


def head_logits(heads, x: torch.Tensor, *, dropout: float = 0.0, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """``heads(x)`` ``(S, K)``; with `dropout` > 0 each head sees its own inverted-dropout mask of `x`
    (so the heads disagree where the inputs' evidence is thin)."""
    if dropout <= 0:
        return heads(x)
    K = heads.n_heads
    mask = (torch.rand((K, *x.shape), generator=generator) >= dropout).to(x.dtype) / (1.0 - dropout)
    xk = x.unsqueeze(0) * mask  # (K, S, F)
    z = torch.relu(torch.einsum("knh,khd->knd", xk, heads.W1) + heads.b1.unsqueeze(1))
    z = torch.relu(torch.baddbmm(heads.b2.unsqueeze(1), z, heads.W2))
    return torch.baddbmm(heads.b3.unsqueeze(1), z, heads.W3).squeeze(-1).transpose(0, 1)


@torch.no_grad()
def score_cached(heads, cache: HeadInputs, chunk: int = 65536) -> list[np.ndarray | None]:
    """Per row, the heads' probabilities ``(n_scored_steps, K)`` (None for a row that could not be encoded)."""
    was = heads.training
    heads.eval()
    probs = torch.cat([torch.sigmoid(heads(cache.x[k:k + chunk])) for k in range(0, max(1, len(cache.x)), chunk)]
                      ) if len(cache.x) else torch.zeros((0, heads.n_heads))
    heads.train(was)
    p = probs.numpy()
    return [None if cache.errors[i] is not None else p[cache.offsets[i]:cache.offsets[i + 1]]
            for i in range(len(cache))]


def score_results(heads, cache: HeadInputs, ids: Sequence[str]) -> list[ScoreResult]:
    """`score_trajectories`' results for the rows `ids` of the cache (the heads' probabilities; a row the
    scorer could not encode keeps its error)."""
    sub = cache.rows(cache.index(ids))
    out = []
    for i, probs in enumerate(score_cached(heads, sub)):
        n = int(sub.n_steps[i])
        if probs is None:
            out.append(ScoreResult(None, 0, sub.errors[i], n))
        else:
            out.append(ScoreResult(probs.astype(np.float32), len(probs), None, n))
    return out


def load_heads(heads, path: str | Path) -> None:
    """Load a checkpoint's `heads.safetensors` and its calibration into `heads` (same sizes; the backbone is
    not read)."""
    heads.load_state_dict(load_file(str(Path(path) / HEADS_NAME)))
    config = Path(path) / PRM_CONFIG_NAME
    heads.calibration = check_record(json.loads(config.read_text()).get("calibration")) if config.is_file() else None


# --------------------------------------------------------------------------- training


class _Heads(torch.nn.Module):
    """Holds the heads as ``.heads`` so parameter names (and so optimizer state) match the full PRM's."""

    def __init__(self, heads) -> None:
        super().__init__()
        self.heads = heads


@dataclass
class CachedExample:
    row: int  # position in the cache
    targets: list[float | None]
    weight: float


def cached_examples(cache: HeadInputs, idx: Sequence[int], labels: Sequence[int],
                    weights: Sequence[float] | None = None,
                    soft: Sequence[Sequence[float | None] | None] | None = None) -> list[CachedExample]:
    """Training examples of rows `idx` with earliest-error labels (as actprm.trainer.build_examples:
    rows that could not be encoded and rows whose error was cut off are dropped)."""
    out = []
    for j, (i, label) in enumerate(zip(idx, labels)):
        if cache.errors[i] is not None:
            continue
        n_scored = int(cache.offsets[i + 1] - cache.offsets[i])
        targets = step_targets(int(label), int(cache.n_steps[i]), soft[j] if soft is not None else None)[:n_scored]
        if all(t is None for t in targets):
            continue
        out.append(CachedExample(int(i), targets, float(weights[j]) if weights is not None else 1.0))
    return out


def train_heads_cached(heads, cache: HeadInputs, examples: list[CachedExample], cfg, *,
                       anchor: dict[str, torch.Tensor], optimizer_state: dict[str, torch.Tensor] | None = None,
                       error_weight: float | None = None, feature_dropout: float = 0.0, bootstrap: bool = False,
                       holdout: list[CachedExample] | None = None
                       ) -> tuple[RoundResult, dict[str, torch.Tensor]]:
    """One frozen-backbone round (``actprm.trainer.train_round``) on cached inputs; trains `heads` in place.

    `cfg` is a TrainConfig (lr, head_lr, epochs, batch_size, grad_accum, warmup_steps, grad_clip,
    learning_probability, anchor_lambda, seed). Returns the round's result and the optimizer state to
    pass to the next round (keyed as a checkpoint's optimizer.safetensors). `cfg.error_weight` and
    `cfg.prior_bias` act as in the uncached trainer (`error_weight` here overrides the former). Options
    beyond the uncached trainer (defaults off): `feature_dropout`
    gives each head its own dropout mask of the inputs; `bootstrap` replaces the per-batch Bernoulli keep
    mask by one Poisson(1) count per (trajectory, head) for the round (each head its own resample).
    `holdout`: the stopping rule and the calibration of the uncached round (``trainer.EarlyStopping``).
    """
    cfg = with_epochs(cfg, bool(holdout))
    result = RoundResult(examples=len(examples), held_out=len(holdout or []))
    heads.calibration = None
    holder = _Heads(heads)
    heads.train()
    for p in heads.parameters():
        p.requires_grad_(True)
    params = list(heads.parameters())
    optimizer = torch.optim.AdamW([{"params": params, "lr": cfg.head_lr or cfg.lr, "weight_decay": 0.0}],
                                  betas=(0.9, 0.999))
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    if optimizer_state:
        result.resumed_optimizer = load_optimizer_state(holder, optimizer, optimizer_state) > 0
    elif getattr(cfg, "prior_bias", False):
        set_prior_bias(heads, [e.targets for e in examples])
    if error_weight is None:
        error_weight = resolve_error_weight(cfg, [e.targets for e in examples])
    result.error_weight = error_weight
    lengths = np.array([int(cache.lengths[e.row]) for e in examples])
    rng = np.random.default_rng(cfg.seed)
    keep_gen = torch.Generator().manual_seed(cfg.seed)
    drop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    K = heads.n_heads
    if bootstrap:
        counts = torch.from_numpy(np.random.default_rng(cfg.seed + 2).poisson(1.0, (len(examples), K))).float()
    # per example: its rows of x, targets, trained flags (built once; a batch concatenates them)
    xs = [cache.x[cache.offsets[e.row]:cache.offsets[e.row + 1]] for e in examples]
    tg = [torch.tensor([0.0 if t is None else t for t in e.targets]) for e in examples]
    tr = [torch.tensor([t is not None for t in e.targets]) for e in examples]

    def loss_of(batch: list[int]) -> torch.Tensor:
        x = torch.cat([xs[i] for i in batch])
        targets = torch.cat([tg[i] for i in batch])
        trained = torch.cat([tr[i] for i in batch])
        rows = torch.cat([torch.full((len(tg[i]),), r, dtype=torch.long) for r, i in enumerate(batch)])
        weights = torch.tensor([examples[i].weight for i in batch], dtype=torch.float32)
        keep = torch.rand((len(batch), K), generator=keep_gen) < cfg.learning_probability
        if bootstrap:
            keep = keep.float() * counts[batch]
        logits = head_logits(heads, x, dropout=feature_dropout, generator=drop_gen)
        loss = actprm_loss(logits, targets, trained, rows, weights, keep, error_weight)
        return loss + cfg.anchor_lambda * anchor_penalty(heads, anchor)

    stopping = None
    if holdout:
        xh = [cache.x[cache.offsets[e.row]:cache.offsets[e.row + 1]] for e in holdout]

        @torch.no_grad()
        def holdout_logits() -> list[torch.Tensor]:
            z = heads(torch.cat(xh)) if xh else torch.zeros((0, heads.n_heads))
            return list(torch.split(z, [len(x) for x in xh]))

        stopping = EarlyStopping(holder, optimizer, holdout_logits, [e.targets for e in holdout], error_weight,
                                 cfg.patience)
    run_epochs(holder, optimizer, cfg, lengths, cfg.batch_size, rng, loss_of, result, after_epoch=stopping)
    if stopping is not None:
        stopping.finish(result, heads)
    heads.eval()
    return result, optimizer_state_dict(holder, optimizer)


def set_bias_to_prior(heads, p_correct: float) -> None:
    """Set every head's output bias to logit(`p_correct`) (actprm.train.set_prior_bias from a share)."""
    set_prior_bias(heads, [[float(p_correct)]])


# --------------------------------------------------------------------------- many runs at once


@dataclass
class HeadRun:
    """One learner of :func:`train_heads_cached_many`: its heads (trained in place), examples, anchor,
    optimizer state (None at first; replaced by the round's) and seed (batch order, keep masks)."""

    heads: Any
    examples: list[CachedExample]
    anchor: dict[str, torch.Tensor]
    seed: int
    optimizer_state: dict[str, torch.Tensor] | None = None
    result: RoundResult | None = None


_PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3")


def train_heads_cached_many(runs: list[HeadRun], cache: HeadInputs, cfg, *, error_weight: float | None = None,
                            feature_dropout: float = 0.0, bootstrap: bool = False) -> None:
    """:func:`train_heads_cached` for several independent learners in lockstep, as one stacked op per step.

    Each run keeps its own batches, keep masks, loss normalisation, gradient clipping and AdamW moments
    (AdamW without weight decay is elementwise, so stacking the parameters changes nothing but float
    order), so every run ends where its own :func:`train_heads_cached` would (within float noise); the
    cost of a step is about that of one run's. Runs must have the same number of examples and the same
    optimizer step count (the schedule and Adam's bias correction are shared); `cfg.seed` is ignored
    (each run's own). Fills each run's `result` and `optimizer_state`; heads are updated in place.
    """
    if not runs:
        return
    cfg = with_epochs(cfg, False)
    n = {len(r.examples) for r in runs}
    steps_before = {int(r.optimizer_state["heads.W1::step"].item()) if r.optimizer_state else 0 for r in runs}
    if len(n) != 1 or len(steps_before) != 1:
        raise ValueError("runs trained together need the same number of examples and optimizer steps")
    R, K = len(runs), runs[0].heads.n_heads
    F_, D = runs[0].heads.hidden_size, runs[0].heads.head_hidden
    for r in runs:  # trained on the raw logits, as train_heads_cached; their old calibration no longer applies
        r.heads.calibration = None
    # as train_heads_cached: each run's own error weight (cfg.error_weight unless given) and prior-bias start
    weights = [error_weight if error_weight is not None else resolve_error_weight(cfg, [e.targets for e in r.examples])
               for r in runs]
    if not runs[0].optimizer_state and getattr(cfg, "prior_bias", False):
        for r in runs:
            set_prior_bias(r.heads, [e.targets for e in r.examples])

    stacked = EnsembleHeads(F_, R * K, D, init=False)
    with torch.no_grad():
        for name in _PARAMS:
            getattr(stacked, name).copy_(torch.cat([getattr(r.heads, name).detach() for r in runs]))
    anchor = {name: torch.cat([r.anchor[name] for r in runs]) for name in _PARAMS}
    holder = _Heads(stacked)
    params = list(stacked.parameters())
    optimizer = torch.optim.AdamW([{"params": params, "lr": cfg.head_lr or cfg.lr, "weight_decay": 0.0}],
                                  betas=(0.9, 0.999))
    for g in optimizer.param_groups:
        g["base_lr"] = g["lr"]
    if runs[0].optimizer_state:
        state = {}
        for name in _PARAMS:
            for part in ("exp_avg", "exp_avg_sq"):
                state[f"heads.{name}::{part}"] = torch.cat([r.optimizer_state[f"heads.{name}::{part}"] for r in runs])
            state[f"heads.{name}::step"] = runs[0].optimizer_state[f"heads.{name}::step"]
        load_optimizer_state(holder, optimizer, state)
    # per run: the same batch order and mask draws as its own round
    per = []
    for r in runs:
        ex = r.examples
        lengths = np.array([int(cache.lengths[e.row]) for e in ex])
        rng = np.random.default_rng(r.seed)
        micro = max(1, math.ceil(len(ex) / cfg.batch_size))
        per_epoch = max(1, micro // cfg.grad_accum)
        epochs = [list(_length_batches(lengths, cfg.batch_size, rng))[: per_epoch * cfg.grad_accum]
                  for _ in range(cfg.epochs)]
        boot = (torch.from_numpy(np.random.default_rng(r.seed + 2).poisson(1.0, (len(ex), K))).float()
                if bootstrap else None)
        per.append({"batches": [b for e in epochs for b in e], "keep": torch.Generator().manual_seed(r.seed),
                    "drop": torch.Generator().manual_seed(r.seed + 1), "boot": boot,
                    "xs": [cache.x[cache.offsets[e.row]:cache.offsets[e.row + 1]] for e in ex],
                    "tg": [torch.tensor([0.0 if t is None else t for t in e.targets]) for e in ex],
                    "tr": [torch.tensor([t is not None for t in e.targets]) for e in ex],
                    "w": torch.tensor([e.weight for e in ex], dtype=torch.float32)})
    total = len(per[0]["batches"]) // cfg.grad_accum

    lr_scale = linear_schedule(total, cfg.warmup_steps)
    results = [RoundResult(examples=len(r.examples)) for r in runs]
    stacked.train()
    for step in range(total):
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * lr_scale(step)
        optimizer.zero_grad(set_to_none=True)
        values = torch.zeros(R)
        for a in range(cfg.grad_accum):
            loss_r = _stacked_loss(stacked, per, step * cfg.grad_accum + a, R, K, cfg, anchor, weights,
                                   feature_dropout)
            (loss_r.sum() / cfg.grad_accum).backward()
            values += loss_r.detach() / cfg.grad_accum
        _clip_per_run(stacked, R, K, cfg.grad_clip)
        optimizer.step()
        for res, v in zip(results, values.tolist()):
            res.losses.append(round(v, 5))
    stacked.eval()
    opt = optimizer_state_dict(holder, optimizer)
    for i, (r, res) in enumerate(zip(runs, results)):
        sl = slice(i * K, (i + 1) * K)
        with torch.no_grad():
            for name in _PARAMS:
                getattr(r.heads, name).copy_(getattr(stacked, name)[sl])
        r.heads.eval()
        r.optimizer_state = {k: (v if k.endswith("::step") else v[sl].clone()) for k, v in opt.items()}
        res.epochs = cfg.epochs
        res.steps = total
        if res.losses:
            k = max(1, len(res.losses) // 10)
            res.first_loss, res.last_loss = float(np.mean(res.losses[:k])), float(np.mean(res.losses[-k:]))
        r.result = res


def _length_batches(lengths, batch_size, rng):

    return length_batches(lengths, batch_size, rng)


def _stacked_loss(stacked, per, j: int, R: int, K: int, cfg, anchor, error_weight: list[float],
                  feature_dropout: float) -> torch.Tensor:
    """(R,) the runs' losses on their j-th micro-batches (padded to one length, pads untrained)."""
    xs, tgs, trs, rws = [], [], [], []
    for p in per:
        batch = p["batches"][j]
        xs.append(torch.cat([p["xs"][i] for i in batch]))
        tgs.append(torch.cat([p["tg"][i] for i in batch]))
        trs.append(torch.cat([p["tr"][i] for i in batch]))
        rows = torch.cat([torch.full((len(p["tg"][i]),), r, dtype=torch.long) for r, i in enumerate(batch)])
        keep = (torch.rand((len(batch), K), generator=p["keep"]) < cfg.learning_probability).float()
        if p["boot"] is not None:
            keep = keep * p["boot"][batch]
        # (K, S) weight of each (head, step): kept pair x trained x row weight
        rws.append(keep[rows].T * p["w"][batch][rows].unsqueeze(0))
    N = max(len(t) for t in tgs)
    Fdim = xs[0].shape[1]
    x = torch.zeros((R, N, Fdim))
    tg = torch.zeros((R, N))
    w = torch.zeros((R, K, N))
    for r in range(R):
        s = len(tgs[r])
        x[r, :s] = xs[r]
        tg[r, :s] = tgs[r]
        step_w = trs[r].float()
        if error_weight[r] != 1.0:
            step_w = step_w * torch.where(tgs[r] < 0.5, error_weight[r], 1.0)
        w[r, :, :s] = rws[r] * step_w.unsqueeze(0)
    W1 = stacked.W1.view(R, K, Fdim, -1)
    D = W1.shape[-1]
    if feature_dropout > 0:
        masks = [(torch.rand((K, N, Fdim), generator=p["drop"]) >= feature_dropout).float() / (1 - feature_dropout)
                 for p in per]
        z = torch.einsum("rknf,rkfd->rknd", x.unsqueeze(1) * torch.stack(masks), W1)
    else:
        z = torch.einsum("rnf,rkfd->rknd", x, W1)
    z = torch.relu(z + stacked.b1.view(R, K, 1, D))
    z = torch.relu(torch.einsum("rknd,rkde->rkne", z, stacked.W2.view(R, K, D, D)) + stacked.b2.view(R, K, 1, D))
    logits = torch.einsum("rknd,rkdo->rkno", z, stacked.W3.view(R, K, D, 1)).squeeze(-1) + stacked.b3.view(R, K, 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, tg.unsqueeze(1).expand_as(logits),
                                                               reduction="none")
    loss = (bce * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2)).clamp_min(1e-8)
    if cfg.anchor_lambda:
        pen = sum(((getattr(stacked, n) - anchor[n]) ** 2).view(R, -1).sum(1) for n in _PARAMS)
        loss = loss + cfg.anchor_lambda * pen / sum(getattr(stacked, n)[:K].numel() for n in _PARAMS)
    return loss


@torch.no_grad()
def _clip_per_run(stacked, R: int, K: int, max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ over each run's slice of the stacked parameters."""
    sq = sum(getattr(stacked, n).grad.view(R, -1).pow(2).sum(1) for n in _PARAMS)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for n in _PARAMS:
        g = getattr(stacked, n).grad
        g.mul_(coef.repeat_interleave(K).view(-1, *([1] * (g.dim() - 1))))


# --------------------------------------------------------------------------- one round, saved


def _examples_of(cache: HeadInputs, rows: list[dict[str, Any]], counts: LabelCounts) -> list[CachedExample]:
    """Training examples of labelled `rows` (each in the cache), counted as build_examples counts them."""
    idx = cache.index([str(r["id"]) for r in rows])
    for i in idx:
        if cache.errors[i] is not None:
            counts.too_long += 1
        else:
            counts.truncated += int(cache.n_scored[i] < cache.n_steps[i])
    examples = cached_examples(cache, idx, [int(r["label_first_error"]) for r in rows],
                               [float(r.get("label_weight") or 1.0) for r in rows],
                               [r.get("step_labels") for r in rows])
    counts.error_cut_off += sum(cache.errors[i] is None for i in idx) - len(examples)
    return examples


def train_frozen_and_save(cfg, rows: list[dict[str, Any]], counts: LabelCounts, device: torch.device, *,
                          progress: bool = False) -> TrainResult:
    """`train_and_save` for the ActPRM objective with `backbone: frozen`, in-process: the backbone runs once
    over the labelled rows on `device` (extract_head_inputs), then every pass trains the heads on those
    inputs on the CPU."""
    loaded = load_checkpoint(cfg.model, device)
    model, tokenizer = loaded[:2]
    with precision.autocast(cfg, device):
        cache = extract_head_inputs(model, tokenizer, rows, max_length=cfg.max_length, device=device,
                                    system_prompt=cfg.system_prompt, progress=progress)
    model.to("cpu")  # the heads train on the CPU, beside the cached inputs
    return train_and_save_cached(cfg, rows, counts, cache, loaded=loaded)


def train_in_process(cfg, rows: list[dict[str, Any]], counts: LabelCounts, device: torch.device, *,
                     progress: bool = False) -> TrainResult:
    """One round of `cfg.objective` from `cfg.model` to `cfg.output` on labelled `rows`, in this process: the
    frozen-backbone round (`train_frozen_and_save`) for the ActPRM objective with `backbone: frozen`, else
    `actprm.trainer.train_and_save`. The train job, the loop and `actprm.train` all call this. Raises
    NothingToTrain."""
    if cfg.objective == "actprm" and cfg.backbone == "frozen":  # the backbone once, then the heads' passes
        return train_frozen_and_save(cfg, rows, counts, device, progress=progress)
    result = train_and_save(cfg, rows, counts, device, progress=progress)
    assert result is not None  # one process: rank 0
    return result


def train_and_save_cached(cfg, rows: list[dict[str, Any]], counts: LabelCounts, cache: HeadInputs, *,
                          loaded: tuple | None = None) -> TrainResult:
    """`actprm.trainer.train_and_save` for the ActPRM objective with `backbone: frozen`, on cached inputs:
    load `cfg.model` (or take `loaded`, its load_checkpoint whose backbone made `cache`), train its heads one
    round on the labelled `rows` (labelled schema, each in the cache), save the checkpoint to `cfg.output`
    exactly as the uncached round does. Raises NothingToTrain."""
    model, tokenizer, anchor, opt_state, prev = loaded or load_checkpoint(cfg.model, torch.device("cpu"))
    if loaded is None:
        fp = model_fingerprint(model, cfg.max_length)
        if fp != cache.fingerprint:
            raise ValueError(f"head inputs cached for model {cache.fingerprint}, not {cfg.model} ({fp})")
    train_rows, held_rows = split_holdout(rows, cfg.holdout)
    examples = _examples_of(cache, train_rows, counts)
    holdout = _examples_of(cache, held_rows, counts)
    if not examples:
        raise NothingToTrain("nothing to train on: no labelled trajectory survived the join "
                             f"({counts.labelled} labelled rows, {counts.too_long} too long)")
    result, state_dict = train_heads_cached(model.heads, cache, examples, cfg, anchor=anchor,
                                            optimizer_state=opt_state, holdout=holdout)
    state = result.state(cfg, counts, prev, cfg.model or DEFAULT_MODEL_NAME, workers=1, dtype="float32",
                         head_inputs_cached=True)
    out = Path(cfg.output)
    save_checkpoint(out, model, tokenizer, None, anchor, state, optimizer_state=state_dict)
    return TrainResult(counts, result, out, state["round"])
