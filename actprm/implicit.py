"""Implicit PRM: process rewards from a causal LM trained on outcome labels only (plain torch; no Ray).

Free Process Rewards (Yuan et al., 2024): with the outcome reward ``r(y) = beta * log pi_theta(y) / pi_ref(y)``,
the partial sums ``q_k = beta * sum over the tokens of steps 0..k of log pi_theta / pi_ref`` are a process
value and ``r_k = q_k - q_{k-1}`` step k's reward. The tokens are the steps' as `actprm.scoring` formats them
(separators left out, as the ensemble's step features do: `actprm.model.step_token_logprobs`). ``pi_ref`` is
frozen: by default the model training started from; ``reference: none`` makes it uniform over the vocabulary.
``step_mean`` is ``sigmoid(q_k)`` (``step_prob: value``) or ``sigmoid(r_k)`` (``reward``); ``step_std`` is
null (one model), so the ActPRM rule acts through ``delta_pred`` alone. This module holds the model, its
loader and its losses; `actprm.trainer` runs its rounds. docs/implicit-and-rollout.md, "Implicit PRM", has the rest.

Checkpoint (DIR): the policy backbone (a tied causal LM that ``AutoModelForCausalLM`` loads too), the
tokenizer, ``implicit_config.json`` (beta, reference, separator, max_length) and the trainer's files.
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
from transformers import AutoModel

from actprm.errors import UserError
from actprm.io.model_files import check_model_dir, read_json_file
from actprm.model import DEFAULT_MAX_LENGTH, ensure_separator, step_token_logprobs
from actprm.outcome import outcome_label
from actprm.scoring import ScoreResult
from actprm.shipped import SHIPPED_BACKBONE, default_backbone_path
from actprm.tokens import STEP_SEPARATOR, load_tokenizer

__all__ = [
    "DEFAULT_BETA",
    "IMPLICIT_CONFIG_NAME",
    "OBJECTIVES",
    "ImplicitPRM",
    "dpo_pairs",
    "implicit_ce_loss",
    "implicit_dpo_loss",
    "load_implicit",
]

#: PRIME's beta.
DEFAULT_BETA = 0.05
IMPLICIT_CONFIG_NAME = "implicit_config.json"
FORMAT_VERSION = 1
#: `reference` value meaning "no reference model" (a uniform pi_ref).
NO_REFERENCE = "none"
OBJECTIVES = ("implicit-ce", "implicit-dpo")


class ImplicitPRM(nn.Module):
    """pi_theta (a tied causal LM loaded with ``AutoModel``) and an optional frozen pi_ref.

    ``forward(input_ids, attention_mask, separator_mask, answer_start)`` returns ``(S, 2)``
    float32 ``[q_k, r_k]`` at the separators in row-major order, like `EnsemblePRM` returns its
    logits; `actprm.scoring` passes them through unchanged (``step_outputs``) and
    :meth:`finish_results` turns them into step probabilities.
    """

    n_outputs = 2  # [q_k, r_k] per step, as a Scorer (actprm.scoring)

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

    def step_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """The values as they are: `finish_results` makes step probabilities of them."""
        return outputs

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
    name = path or SHIPPED_BACKBONE
    directory = Path(_resolve(name))
    if not (directory / "config.json").is_file():
        raise UserError(f"{directory}: not a model directory (no config.json); the implicit PRM needs a causal LM")
    saved = {}
    if (directory / IMPLICIT_CONFIG_NAME).is_file():
        saved = read_json_file(directory / IMPLICIT_CONFIG_NAME)
        if not isinstance(saved, dict):
            raise UserError(f"{directory / IMPLICIT_CONFIG_NAME}: expected a JSON object")
    beta = float(beta if beta is not None else saved.get("beta", DEFAULT_BETA))
    ref_name = reference or saved.get("reference") or (SHIPPED_BACKBONE if path is None else str(directory.resolve()))
    policy = _load_lm(str(directory), device, dtype)
    tokenizer = load_tokenizer(directory)
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
    return outcome_label(row)
