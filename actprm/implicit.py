"""Implicit PRM: process rewards from a causal LM trained on outcome labels only (plain torch; no Ray).

Free Process Rewards (Yuan et al., 2024; ../shared/REFERENCE.md, "Implicit PRM"): with the outcome
reward parameterised as ``r(y) = beta * log pi_theta(y) / pi_ref(y)``, the partial sums

    q_k = beta * sum over the tokens of steps 0..k of log pi_theta(y_t | y_<t) / pi_ref(y_t | y_<t)

are a process value, and step k's reward is ``r_k = q_k - q_{k-1}`` (``q_{-1} = 0``). The tokens are
those of the steps as `actprm.scoring.TrajectoryEncoder` formats them (problem as the prompt, each
step followed by the separator); the separators themselves are formatting, not text the policy
wrote, and are left out, exactly as the ensemble PRM's step features do
(`actprm.model.step_token_logprobs`, the one routine both use: tied LM head, ``hidden @ E.T``).
One forward pass per model per micro-batch, batched by `actprm.scoring` as the ensemble is.

``pi_ref`` is a frozen causal LM, by default the model training started from (for the shipped world
backbone: itself, so the untrained implicit PRM gives q = 0 everywhere). It can be omitted
(``reference: none``): then ``pi_ref`` is the uniform distribution over the vocabulary,
``log pi_ref = -log V`` for every token, i.e. ``r = beta * log pi_theta(y) + beta * log V * |y|``
(the papers found dropping the reference often costs little; the uniform form keeps q on the same
scale as with a reference instead of drifting down with length).

**Step probability.** ``step_mean`` (what the earliest-error prediction and ProcessBench F1 read) is
``sigmoid(q_k)`` by default (``step_prob: value``): trained with cross-entropy, ``sigmoid(r)`` is the
probability that the answer is right, so ``sigmoid(q_k)`` estimates it after step k and the first
step where it falls below 0.5 is the predicted earliest error. ``step_prob: reward`` uses
``sigmoid(r_k)`` instead (the first step that lowers the value); BENCHMARKS.md, "Implicit PRM",
compares the two on the world. ``step_value`` and ``step_reward`` are written as they are (beta-scaled
log-ratios), ``step_std`` is null (one model, no ensemble).

**Uncertainty.** A margin rule on the step scores up to the predicted earliest error: step k is
certain iff ``|step_mean_k - 0.5| >= delta_pred - 0.5`` (the logit it is the sigmoid of, q_k or r_k,
is at least ``logit(delta_pred)`` away from 0); a trajectory is uncertain iff some step 0..E is
not. It is the ActPRM rule of `actprm.uncertainty` with one "head" (spread 0), so `delta_std` has no
effect and the acquisition `margin` / `entropy` rank by the same closeness to 0.5.

**Training** (`actprm train --objective implicit-ce | implicit-dpo`, response-level labels only):
``implicit-ce`` is binary cross-entropy of ``sigmoid(r(y))`` against the outcome; ``implicit-dpo``
is ``-log sigmoid(r(y_w) - r(y_l))`` over (right, wrong) pairs, paired within a problem first, the
rest across problems in a seeded order (the world has one response per problem: the DPO there is
the unpaired variant). All of the policy is trained (AdamW, the schedule of `actprm.train`); the
reference stays frozen.

Checkpoint (DIR): the policy backbone (``config.json``, ``model.safetensors``: a tied causal LM;
``AutoModelForCausalLM`` loads it too), the tokenizer, ``implicit_config.json`` (beta, reference,
separator, max_length), plus the trainer files of `actprm.train` (optimizer moments,
``trainer_state.json``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from actprm.errors import UserError
from actprm.model import (
    DEFAULT_MAX_LENGTH,
    default_backbone_path,
    ensure_separator,
    step_token_logprobs,
)
from actprm.scoring import ScoreResult
from actprm.tokens import STEP_SEPARATOR
from actprm.train import (
    OPTIMIZER_NAME,
    STATE_NAME,
    Example,
    RoundResult,
    TrainResult,
    autocast,
    collate,
    load_optimizer_state,
    run_epochs,
    save_checkpoint,
)

__all__ = [
    "DEFAULT_BETA",
    "IMPLICIT_CONFIG_NAME",
    "OBJECTIVES",
    "ImplicitPRM",
    "dpo_pairs",
    "implicit_ce_loss",
    "implicit_dpo_loss",
    "load_implicit",
    "train_and_save_implicit",
]

#: PRIME's beta.
DEFAULT_BETA = 0.05
IMPLICIT_CONFIG_NAME = "implicit_config.json"
FORMAT_VERSION = 1
#: `reference` value meaning "no reference model" (a uniform pi_ref).
NO_REFERENCE = "none"
#: How the shipped backbone is recorded as a reference (the same on every machine).
SHIPPED_BACKBONE = "actprm/assets/backbone"
OBJECTIVES = ("implicit-ce", "implicit-dpo")


class ImplicitPRM(nn.Module):
    """pi_theta (a tied causal LM loaded with ``AutoModel``) and an optional frozen pi_ref.

    ``forward(input_ids, attention_mask, separator_mask, answer_start)`` returns ``(S, 2)``
    float32 ``[q_k, r_k]`` at the separators in row-major order, like `EnsemblePRM` returns its
    logits; `actprm.scoring` passes them through unchanged (``raw_outputs``) and
    :meth:`finish_results` turns them into step probabilities.
    """

    raw_outputs = True
    n_outputs = 2

    def __init__(self, policy: nn.Module, reference: nn.Module | None, *, beta: float = DEFAULT_BETA,
                 separator_token_id: int, separator_token: str = STEP_SEPARATOR, max_length: int | None = None,
                 tokenizer: Any = None, reference_name: str | None = None, step_prob: str = "value") -> None:
        super().__init__()
        for lm in (policy, reference):
            if lm is not None and not getattr(lm.config, "tie_word_embeddings", False):
                raise ValueError("the implicit PRM reads log-probs through a tied LM head: "
                                 "the model needs tied input/output embeddings")
        if step_prob not in ("value", "reward"):
            raise ValueError(f"step_prob must be value or reward, got {step_prob!r}")
        self.backbone = policy
        self.reference = reference
        if reference is not None:
            reference.requires_grad_(False)
            reference.eval()
        self.beta = float(beta)
        self.separator_token_id = int(separator_token_id)
        self.separator_token = separator_token
        max_pos = getattr(policy.config, "max_position_embeddings", None)
        self.max_length = int(max_length or (min(DEFAULT_MAX_LENGTH, max_pos) if max_pos else DEFAULT_MAX_LENGTH))
        self.tokenizer = tokenizer
        self.reference_name = reference_name
        self.step_prob = step_prob

    def train(self, mode: bool = True) -> ImplicitPRM:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # always frozen
        return self

    # ---- forward
    def step_log_ratios(self, input_ids: torch.Tensor, separator_mask: torch.Tensor,
                        answer_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(beta * sum of the step's token log-ratios (S,), the row of each separator (S,))``."""
        hidden = self.backbone(input_ids=input_ids, use_cache=False).last_hidden_state
        sep = separator_mask.to(hidden.device, torch.bool)
        weight = self.backbone.get_input_embeddings().weight
        lp, group, at, n_groups = step_token_logprobs(hidden, input_ids, sep, answer_start, weight)
        if self.reference is None:
            ref = torch.full_like(lp, -math.log(weight.shape[0]))  # uniform pi_ref
        else:
            with torch.no_grad():
                ref_hidden = self.reference(input_ids=input_ids, use_cache=False).last_hidden_state
                ref_weight = self.reference.get_input_embeddings().weight
                ref = step_token_logprobs(ref_hidden, input_ids, sep, answer_start, ref_weight)[0]
        sums = hidden.new_zeros(n_groups, dtype=torch.float32).index_add(0, group, self.beta * (lp - ref))
        return sums[at], sep.nonzero(as_tuple=True)[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                separator_mask: torch.Tensor | None = None, answer_start: torch.Tensor | None = None) -> torch.Tensor:
        if separator_mask is None:
            separator_mask = input_ids == self.separator_token_id
        if answer_start is None:
            raise ValueError("the implicit PRM needs answer_start (where each row's steps begin)")
        r, rows = self.step_log_ratios(input_ids, separator_mask, answer_start)
        # q: cumulative within each row (separators are row-major, so subtract the earlier rows' totals)
        totals = r.new_zeros(input_ids.shape[0]).index_add(0, rows, r)
        before = torch.cumsum(totals, 0) - totals
        q = torch.cumsum(r, 0) - before[rows]
        return torch.stack([q, r], dim=-1)

    def outcome_rewards(self, input_ids: torch.Tensor, separator_mask: torch.Tensor,
                        answer_start: torch.Tensor) -> torch.Tensor:
        """``r(y) = beta * log pi_theta(y) / pi_ref(y)`` per row, ``(B,)`` (differentiable)."""
        r, rows = self.step_log_ratios(input_ids, separator_mask, answer_start)
        return r.new_zeros(input_ids.shape[0]).index_add(0, rows, r)

    def finish_results(self, results: list[ScoreResult]) -> list[ScoreResult]:
        """`actprm.scoring`'s results of ``[q, r]`` rows -> ``probs`` ``(n, 1)``, the step probability (one
        "head", so the ensemble's rule and acquisitions apply unchanged), plus `step_value` / `step_reward`."""
        out = []
        for res in results:
            if res.probs is None:
                out.append(res)
                continue
            q, r = res.probs[:, 0].astype(np.float32), res.probs[:, 1].astype(np.float32)
            logit = q if self.step_prob == "value" else r
            prob = (1.0 / (1.0 + np.exp(-logit.astype(np.float64)))).astype(np.float32)
            out.append(ScoreResult(prob[:, None], res.n_scored_steps, None, res.n_steps,
                                   res.problem_tokens_dropped, step_value=q, step_reward=r))
        return out

    # ---- persistence
    def implicit_config(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "kind": "implicit", "beta": self.beta,
                "reference": self.reference_name if self.reference is not None else NO_REFERENCE,
                "separator_token": self.separator_token, "separator_token_id": self.separator_token_id,
                "max_length": self.max_length}

    def save_pretrained(self, directory: str | os.PathLike, tokenizer: Any = None) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        (tokenizer if tokenizer is not None else self.tokenizer).save_pretrained(out)
        (out / IMPLICIT_CONFIG_NAME).write_text(json.dumps(self.implicit_config(), indent=2, sort_keys=True) + "\n")
        return out


# --------------------------------------------------------------------------- loading


def _load_lm(path: str, device: str | torch.device, dtype: torch.dtype | None):
    from transformers import AutoModel

    from actprm.io.model_files import check_model_dir

    check_model_dir(path)  # no model code, real safetensors, a config that matches its weights
    try:
        return AutoModel.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True, trust_remote_code=False).to(device)
    except (OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"{path}: cannot load a causal LM for the implicit PRM ({detail[:200]})") from None


def _resolve(name: str) -> str:
    return str(default_backbone_path()) if name == SHIPPED_BACKBONE else name


def load_implicit(path: str | None = None, device: str | torch.device = "cpu", *, beta: float | None = None,
                  reference: str | None = None, step_prob: str = "value",
                  dtype: torch.dtype | None = None) -> tuple[ImplicitPRM, Any]:
    """``(model, tokenizer)``: the causal LM at `path` (default: the shipped world backbone) as pi_theta.

    `beta` and `reference` default to the checkpoint's ``implicit_config.json`` (a model trained by
    `actprm train --objective implicit-*`), else to 0.05 and the model itself (pi_ref = the starting
    point, as in the papers). ``reference="none"``: no reference (uniform pi_ref).
    """
    from transformers import AutoTokenizer

    name = path or SHIPPED_BACKBONE
    directory = Path(_resolve(name))
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory}: not a model directory (no config.json); the implicit PRM needs a causal LM")
    saved = {}
    if (directory / IMPLICIT_CONFIG_NAME).is_file():
        from actprm.io.model_files import read_json_file

        saved = read_json_file(directory / IMPLICIT_CONFIG_NAME)
        if not isinstance(saved, dict):
            raise UserError(f"{directory / IMPLICIT_CONFIG_NAME}: expected a JSON object")
    beta = float(beta if beta is not None else saved.get("beta", DEFAULT_BETA))
    ref_name = reference or saved.get("reference") or (SHIPPED_BACKBONE if path is None else str(directory.resolve()))
    policy = _load_lm(str(directory), device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    sep_id = ensure_separator(tokenizer, policy)
    ref_model = None
    if ref_name != NO_REFERENCE:
        ref_path = _resolve(ref_name)
        if not (Path(ref_path) / "config.json").is_file():
            raise UserError(f"reference {ref_name}: not a model directory (no config.json); "
                            "pass --reference DIR or --reference none")
        ref_model = _load_lm(ref_path, device, dtype)
        if ref_model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            ensure_separator(tokenizer, ref_model)
    try:
        model = ImplicitPRM(policy, ref_model, beta=beta, separator_token_id=sep_id, tokenizer=tokenizer,
                            max_length=saved.get("max_length"), reference_name=ref_name, step_prob=step_prob)
    except ValueError as exc:
        raise UserError(f"{directory}: {exc}") from None
    model.eval()
    return model, tokenizer


# --------------------------------------------------------------------------- training


def implicit_ce_loss(rewards: torch.Tensor, correct: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted BCE of sigmoid(r(y)) against the outcome (1 right, 0 wrong)."""
    bce = F.binary_cross_entropy_with_logits(rewards.float(), correct.float(), reduction="none")
    return (bce * weights).sum() / weights.sum().clamp_min(1e-8)


def implicit_dpo_loss(rewards: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(r(y_w) - r(y_l))`` averaged over pairs; `rewards` alternate chosen, rejected."""
    chosen, rejected = rewards[0::2].float(), rewards[1::2].float()
    w = weights[0::2] * weights[1::2]
    return (-F.logsigmoid(chosen - rejected) * w).sum() / w.sum().clamp_min(1e-8)


def dpo_pairs(problems: list[str], correct: list[bool], seed: int = 0) -> list[tuple[int, int]]:
    """(right, wrong) index pairs: within a problem first, the leftovers across problems (seeded order)."""
    rng = np.random.default_rng(seed)
    by_problem: dict[str, tuple[list[int], list[int]]] = {}
    for i, (p, ok) in enumerate(zip(problems, correct)):
        by_problem.setdefault(p, ([], []))[0 if ok else 1].append(i)
    pairs, left_w, left_l = [], [], []
    for wins, losses in by_problem.values():
        n = min(len(wins), len(losses))
        pairs += list(zip(wins[:n], losses[:n]))
        left_w += wins[n:]
        left_l += losses[n:]
    left_w = [left_w[i] for i in rng.permutation(len(left_w))]
    left_l = [left_l[i] for i in rng.permutation(len(left_l))]
    return pairs + list(zip(left_w, left_l))


def outcome_of(row: dict[str, Any]) -> bool | None:
    """The response-level label of a training row: a labelled row's label (-1 = right, anything else =
    some step wrong), else the outcome checker (actprm.outcome)."""
    if row.get("label_first_error") is not None:
        return int(row["label_first_error"]) == -1
    from actprm.outcome import outcome_label

    return outcome_label(row)


def build_units(rows: list[dict[str, Any]], encoder, counts, objective: str, seed: int = 0):
    """(examples, units): examples as `actprm.train.Example` with `targets == [outcome]`; a unit is the
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
    per_unit = max(1, cfg.batch_size // unit_size)
    return max(1, math.ceil(n_units / per_unit) // cfg.grad_accum) * cfg.epochs


def train_and_save_implicit(cfg, rows: list[dict[str, Any]], counts, device: torch.device, *,
                            progress: bool = False):
    """`actprm.train.train_and_save` for the implicit objectives: load, train one round, save."""
    from safetensors.torch import load_file

    from actprm.progress import progress_bar
    from actprm.scoring import TrajectoryEncoder

    model, tokenizer = load_implicit(cfg.model, "cpu", beta=cfg.beta, reference=cfg.reference)
    model.to(torch.float32)
    src = Path(cfg.model) if cfg.model else None
    opt_state = load_file(str(src / OPTIMIZER_NAME)) if src is not None and (src / OPTIMIZER_NAME).is_file() else None
    prev = json.loads((src / STATE_NAME).read_text()) if src is not None and (src / STATE_NAME).is_file() else {}
    encoder = TrajectoryEncoder(tokenizer, max_length=cfg.max_length or model.max_length)
    examples, units = build_units(rows, encoder, counts, cfg.objective, cfg.seed)
    if not units:
        what = "no (right, wrong) pair" if cfg.objective == "implicit-dpo" else "no row with an outcome label"
        raise UserError(f"nothing to train on: {what} survived ({counts.labelled} labelled rows, "
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
