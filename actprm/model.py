"""The ensemble process reward model: a decoder backbone plus K small MLP heads.

Architecture (ActPRM, Duan et al. 2025): a causal decoder LM backbone loaded
with ``transformers.AutoModel`` (no LM head) and ``K`` heads that share it.
Each head is an MLP ``hidden -> 128 -> 128 -> 1`` with ReLU.  The heads read
the backbone's last hidden state at the step-separator positions
(``<extra_0>``, :data:`actprm.tokens.STEP_SEPARATOR`); ``sigmoid`` of head
``k`` at the separator after step ``i`` is head ``k``'s probability that step
``i`` is still correct.

All K heads run as one batched op (weights stacked along a leading head axis,
``einsum``/``baddbmm``), always in float32 even when the backbone is bf16.

Presets (:data:`PRESETS`) are ``Qwen2Config`` keyword arguments for random
initialisation (no download): ``tiny`` (tests, CPU), ``small`` (hidden 512)
and ``qwen2-0.5b`` (the shape of Qwen2-0.5B: hidden 896, 24 layers, 14 query
heads, 2 KV heads, intermediate 4864) for GPU throughput measurements.  The
vocabulary size always comes from the tokenizer.

Checkpoint layout written by :meth:`EnsemblePRM.save_pretrained` (no pickles)::

    config.json, model.safetensors   backbone (transformers ``save_pretrained``)
    heads.safetensors                 stacked head weights (safetensors.torch)
    prm_config.json                   n_heads, head_hidden, separator, max_length, ...
    tokenizer.json, tokenizer_config.json, ...   the tokenizer

Step features (``step_features=("lm_logprob",)``, off by default): the heads also
read two numbers per step from the backbone's own language model — the minimum
and the mean, over the step's tokens, of ``log p(token | everything before it)``
under the tied LM head (``hidden @ embeddings.T``).  A small backbone can
compute a step's arithmetic yet be unable to move the comparison "the written
result is not what I would have written" into the separator's hidden state in
its few layers; the LM's surprise at the written token is that comparison
(``BENCHMARKS.md``, "World sanity").  It needs to know where the steps start,
so ``forward`` then takes ``answer_start`` (the index of the first step token,
per row).  It needs tied input/output embeddings (the shipped world backbone);
an untied LM head is not loaded by ``AutoModel`` and is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from torch import nn
from transformers import AutoModel, Qwen2Config

from actprm.calibration import check_record
from actprm.errors import UserError
from actprm.io.model_files import (
    MAX_HEAD_HIDDEN,
    MAX_HEADS,
    check_model_dir,
    positive_int,
    read_json_file,
    safetensors_header,
)
from actprm.shipped import default_backbone_path, default_prm_path
from actprm.tokens import STEP_SEPARATOR, load_tokenizer

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FORMAT_VERSION",
    "HEADS_NAME",
    "HEAD_HIDDEN",
    "HEAD_LAYERS",
    "PRESETS",
    "PRM_CONFIG_NAME",
    "STEP_FEATURES",
    "EnsembleHeads",
    "EnsemblePRM",
    "count_parameters",
    "default_backbone_path",
    "default_prm_path",
    "ensure_separator",
    "from_backbone",
    "init_model",
    "load_prm",
    "newline_token_id",
    "preset_config",
    "step_token_logprobs",
]

#: Width of the two hidden layers of every head.
HEAD_HIDDEN = 128
#: Hidden layers of every head (imported single-head PRMs may have fewer, actprm.importers).
HEAD_LAYERS = 2
#: Per-step features the heads can read besides the separator's hidden state
#: (name -> number of values per step); see :meth:`EnsemblePRM.step_feature_values`.
STEP_FEATURES: dict[str, int] = {"lm_logprob": 2}
#: Token log-probs are clamped here before they are reduced (a pad or a junk token can be -inf).
LOGPROB_FLOOR = -30.0
#: Version of the ``prm_config.json`` / checkpoint layout.
FORMAT_VERSION = 1
#: Default maximum sequence length for scoring (tokens), capped by the backbone.
DEFAULT_MAX_LENGTH = 4096
PRM_CONFIG_NAME = "prm_config.json"
HEADS_NAME = "heads.safetensors"
#: the heads a training round anchors to (written by the trainer, or by an import from ActivePRM's reg_model)
ANCHOR_NAME = "heads_init.safetensors"

_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_cache": False}

#: ``Qwen2Config`` keyword arguments per preset (``vocab_size`` comes from the tokenizer).
#: Parameter counts with the committed 4096-token vocabulary (backbone + K=8 heads):
#: tiny 385,600 + 199,688; small 13,377,024 + 658,440; qwen2-0.5b 361,568,128 + 1,051,656
#: (the real Qwen2-0.5B has 494M parameters, most of the difference being its 151,936-token
#: embedding).  ``use_cache`` is off: a scorer never decodes.
_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
               "max_position_embeddings")
PRESETS: dict[str, dict[str, Any]] = {
    name: {**dict(zip(_SHAPE_KEYS, shape)), **_COMMON, **extra}
    for name, shape, extra in [
        ("tiny", (64, 2, 4, 2, 256, 4096), {}),
        # the shipped world backbone (pipelines/pretrain_backbone.py): a causal LM with tied embeddings
        ("world", (128, 4, 4, 2, 512, 1024), {"tie_word_embeddings": True}),
        ("small", (512, 4, 8, 2, 1408, 4096), {}),
        # the shape of Qwen2-0.5B (random init, for GPU throughput measurements only)
        ("qwen2-0.5b", (896, 24, 14, 2, 4864, 32768), {"rope_theta": 1_000_000.0}),
    ]
}


# --------------------------------------------------------------------------- heads


class EnsembleHeads(nn.Module):
    """K independent MLP heads ``H -> 128 -> 128 -> 1`` evaluated in one batched op.

    Parameters are stacked along a leading head axis: ``W1 (K,H,D)``, ``b1 (K,D)``,
    ``W2 (K,D,D)``, ``b2 (K,D)``, ``W3 (K,D,1)``, ``b3 (K,1)`` with ``D = head_hidden``.
    Weights are initialised from a normal with std ``1/(2*sqrt(fan_in))`` truncated
    at +-2 std; biases are zero.  :meth:`forward` computes in float32 whatever the
    parameter or input dtype, and outside any autocast region.

    ``n_layers`` (default 2) is the number of hidden ReLU layers: 1 gives
    ``H -> D -> 1`` (``W1, b1, W2, b2``), 0 a linear head ``H -> 1`` (``W1, b1``).
    Imported single-head PRMs use them (actprm.importers): a 2-class head is the
    difference of its two logit rows, so ``sigmoid`` of it is the softmax's class 1.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int = 8,
        head_hidden: int = HEAD_HIDDEN,
        *,
        n_layers: int = HEAD_LAYERS,
        generator: torch.Generator | None = None,
        init: bool = True,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        if n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {n_layers}")
        self.hidden_size, self.n_heads = int(hidden_size), int(n_heads)
        self.head_hidden, self.n_layers = int(head_hidden), int(n_layers)
        k, h, d = self.n_heads, self.hidden_size, self.head_hidden
        f32 = torch.float32
        widths = [h] + [d] * self.n_layers + [1]
        for i in range(self.n_layers + 1):
            setattr(self, f"W{i + 1}", nn.Parameter(torch.zeros(k, widths[i], widths[i + 1], dtype=f32)))
            setattr(self, f"b{i + 1}", nn.Parameter(torch.zeros(k, widths[i + 1], dtype=f32)))
        #: the held-out calibration of the heads (actprm.calibration): forward returns
        #: ``scale * logit + shift``; None (the identity) while training and for a model never calibrated
        self.calibration: dict | None = None
        if init:
            self.reset_parameters(generator=generator)

    def layers(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """``[(W, b), ...]`` from the input layer to the output layer."""
        return [(getattr(self, f"W{i + 1}"), getattr(self, f"b{i + 1}")) for i in range(self.n_layers + 1)]

    @staticmethod
    def init_std(fan_in: int) -> float:
        return 1.0 / (2.0 * math.sqrt(fan_in))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        layers = self.layers()
        for w, _ in layers:
            std = self.init_std(w.shape[1])  # fan_in: the input width of the layer
            nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std, generator=generator)
        for _, b in layers:
            b.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (N, H)`` -> logits ``(N, K)`` (float32)."""
        if h.dim() != 2 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden states of shape (N, {self.hidden_size}), got {tuple(h.shape)}")
        with _no_autocast(h.device.type):
            x = h.float()
            layers = [(w.float(), b.float()) for w, b in self.layers()]
            w, b = layers[0]
            z = torch.einsum("nh,khd->knd", x, w) + b.unsqueeze(1)  # (K,N,D)
            for w, b in layers[1:]:
                z = torch.baddbmm(b.unsqueeze(1), torch.relu(z), w)  # (K,N,D)
            z = z.squeeze(-1).transpose(0, 1).contiguous()  # (N,K)
            if self.calibration is not None:
                z = z * float(self.calibration["scale"]) + float(self.calibration["shift"])
            return z

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, n_heads={self.n_heads}, head_hidden={self.head_hidden}, "
                f"n_layers={self.n_layers}")


def _no_autocast(device_type: str):
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # device type without autocast support
        return contextlib.nullcontext()


def step_token_logprobs(hidden: torch.Tensor, input_ids: torch.Tensor, separator_mask: torch.Tensor,
                        answer_start: torch.Tensor, lm_weight: torch.Tensor, lm_dtype: torch.dtype = torch.float32
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``log p(token | everything before it)`` of every step token under a tied LM head.

    Step ``j`` of a row is the tokens from ``answer_start`` (``j = 0``) or the previous
    separator up to its separator, both excluded; the log-prob of the token at ``t`` is
    read from the LM's prediction at ``t - 1`` (``hidden @ lm_weight.T``), clamped at
    :data:`LOGPROB_FLOOR`.  Returns ``(lp (N,), group (N,), at (S,), n_groups)``: ``group``
    numbers each token's (row, step), ``at`` is the group of each separator (row-major),
    so ``index_add`` over ``group`` then ``[at]`` gives per-step reductions.  Differentiable
    (the implicit PRM trains through it, actprm.implicit).  ``lm_dtype``: the type of the
    ``hidden @ lm_weight.T`` product (bfloat16 is ~4x faster on a CPU with AVX512-BF16, its logits
    within ~1e-2); the log-softmax is always float32.
    """
    B, T, _ = hidden.shape
    dev = hidden.device
    ids = input_ids.to(dev)
    before = torch.cumsum(separator_mask.long(), dim=1) - separator_mask.long()  # separators before t
    pos = torch.arange(T, device=dev).unsqueeze(0)
    in_step = (pos >= answer_start.to(dev).view(-1, 1)) & ~separator_mask & (pos >= 1)
    in_step &= before < separator_mask.sum(dim=1, keepdim=True)  # not after the last separator
    rows, cols = in_step.nonzero(as_tuple=True)
    n_groups = B * (T + 1)
    group = rows * (T + 1) + before[rows, cols]
    logp = []
    chunk = max(1, (1 << 26) // lm_weight.shape[0])  # ~256 MB of float32 logits at a time
    with _no_autocast(dev.type):
        lm_head = lm_weight.to(lm_dtype).t()  # once per batch, not per chunk
        for k in range(0, rows.numel(), chunk):
            r, c = rows[k : k + chunk], cols[k : k + chunk]
            logits = (hidden[r, c - 1].to(lm_dtype) @ lm_head).float()
            lp = torch.log_softmax(logits, dim=-1).gather(1, ids[r, c].unsqueeze(1)).squeeze(1)
            logp.append(lp.clamp_min(LOGPROB_FLOOR))
    lp = torch.cat(logp) if logp else hidden.new_zeros(0, dtype=torch.float32)
    srows, scols = separator_mask.nonzero(as_tuple=True)
    at = srows * (T + 1) + before[srows, scols]
    return lp, group, at, n_groups


# --------------------------------------------------------------------------- separator


def newline_token_id(tokenizer: Any) -> int:
    """The id the tokenizer gives a blank line (``"\\n\\n"``) if single, else that of ``"\\n"``."""
    for text in ("\n\n", "\n"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) == 1:
            return int(ids[0])
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if not ids:
        raise ValueError("tokenizer encodes '\\n' to no tokens")
    return int(ids[-1])


def _single_token_id(tokenizer: Any, token: str) -> int | None:
    ids = tokenizer.encode(token, add_special_tokens=False)
    return int(ids[0]) if len(ids) == 1 else None


def ensure_separator(tokenizer: Any, backbone: nn.Module | None = None, separator: str = STEP_SEPARATOR) -> int:
    """Make ``separator`` a single special token of ``tokenizer``; return its id.

    If the tokenizer lacks it, it is added as a special token (the tokenizer is
    modified in place); if ``backbone`` is given and its input embedding matrix is
    too small, the embeddings are resized, and the new row is initialised from
    the embedding of the newline-like token (:func:`newline_token_id`), as ActPRM
    does.  A tokenizer that already has the separator is left untouched.
    """
    sep_id = _single_token_id(tokenizer, separator)
    if sep_id is not None:
        return sep_id

    nl_id = newline_token_id(tokenizer)
    # add_tokens(special_tokens=True) is stable across transformers 4.x/5.x (5.x renamed
    # ``additional_special_tokens`` to ``extra_special_tokens`` in add_special_tokens).
    tokenizer.add_tokens([AddedToken(separator, special=True, normalized=False)], special_tokens=True)
    sep_id = _single_token_id(tokenizer, separator)
    if sep_id is None:
        raise RuntimeError(f"could not add {separator!r} to the tokenizer as a single token")
    if backbone is not None:
        emb = backbone.get_input_embeddings()
        if sep_id >= emb.weight.shape[0]:
            backbone.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            emb = backbone.get_input_embeddings()
        with torch.no_grad():
            emb.weight[sep_id].copy_(emb.weight[nl_id])
    return sep_id


# --------------------------------------------------------------------------- model


class EnsemblePRM(nn.Module):
    """Decoder backbone (``AutoModel``) + :class:`EnsembleHeads`.

    ``forward(input_ids, attention_mask, separator_mask)`` returns the logits of
    all heads at the separator positions, ``(n_separators_total, K)`` float32, in
    row-major order (batch row, then position).  ``model.tokenizer`` holds the
    tokenizer when the model was built by :func:`init_model`, :func:`from_backbone`
    or :meth:`from_pretrained`.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_heads: int = 8,
        separator_token_id: int,
        separator_token: str = STEP_SEPARATOR,
        head_hidden: int = HEAD_HIDDEN,
        max_length: int | None = None,
        preset: str | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        init_heads: bool = True,
        tokenizer: Any = None,
        step_features: Sequence[str] = (),
        head_layers: int = HEAD_LAYERS,
        prompt: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.step_features = tuple(step_features)
        unknown = [f for f in self.step_features if f not in STEP_FEATURES]
        if unknown:
            raise ValueError(f"unknown step features {unknown}; choose from {sorted(STEP_FEATURES)}")
        if "lm_logprob" in self.step_features and not getattr(backbone.config, "tie_word_embeddings", False):
            raise ValueError("step feature lm_logprob needs a backbone with tied input/output embeddings")
        hidden = int(backbone.config.hidden_size)
        n_extra = sum(STEP_FEATURES[f] for f in self.step_features)
        self.heads = EnsembleHeads(hidden + n_extra, n_heads, head_hidden, n_layers=head_layers, generator=generator,
                                   init=init_heads)
        self.separator_token_id = int(separator_token_id)
        self.separator_token = separator_token
        max_pos = getattr(backbone.config, "max_position_embeddings", None)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, max_pos) if max_pos else DEFAULT_MAX_LENGTH
        self.max_length = int(max_length)
        self.preset = preset
        self.seed = seed
        self.tokenizer = tokenizer
        # how trajectories become text for this model (actprm.scoring.PROMPT_KEYS); {}: the default format
        self.prompt = dict(prompt or {})
        self.source = source  # what an imported PRM was converted from (actprm.importers), else None
        #: True: the step features' LM-head product in float32 whatever the backbone's dtype (the older path)
        self.reference_features = False

    # ---- properties
    @property
    def n_heads(self) -> int:
        return self.heads.n_heads

    # ---- as a Scorer (actprm.scoring): K head probabilities per step
    @property
    def n_outputs(self) -> int:
        return self.n_heads

    def step_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(outputs)

    def finish_results(self, results: list) -> list:
        return results

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def prm_config(self) -> dict[str, Any]:
        cfg = {
            "format_version": FORMAT_VERSION,
            "n_heads": self.heads.n_heads,
            "head_hidden": self.heads.head_hidden,
            "hidden_size": self.heads.hidden_size,
            "separator_token": self.separator_token,
            "separator_token_id": self.separator_token_id,
            "max_length": self.max_length,
            "preset": self.preset,
            "seed": self.seed,
            "backbone_model_type": getattr(self.backbone.config, "model_type", None),
            "step_features": list(self.step_features),
        }
        # written only when they differ from the defaults, so a default model's file is unchanged
        if self.heads.n_layers != HEAD_LAYERS:
            cfg["head_layers"] = self.heads.n_layers
        if self.prompt:
            cfg["prompt"] = dict(self.prompt)
        if self.source:
            cfg["source"] = dict(self.source)
        if self.heads.calibration is not None:
            cfg["calibration"] = dict(self.heads.calibration)
        return cfg

    # ---- forward
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                separator_mask: torch.Tensor | None = None, answer_start: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(n_separators_total, K)`` at the ``True`` entries of ``separator_mask``.

        ``separator_mask`` (bool, same shape as ``input_ids``) defaults to
        ``input_ids == separator_token_id`` restricted to ``attention_mask``; pass
        it explicitly to ignore separators that are not step ends.
        ``answer_start`` (long, ``(B,)``): index of each row's first step token;
        needed only by models with step features.
        """
        return self.heads(self.head_inputs(input_ids, attention_mask, separator_mask, answer_start))

    def head_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        separator_mask: torch.Tensor | None = None,
        answer_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the heads read, ``(n_separators_total, H [+ step features])``: the separators' hidden
        states, then the step features if the model has them (arguments as :meth:`forward`).  With a
        frozen backbone they can be computed once and cached (actprm.features)."""
        if separator_mask is None:
            separator_mask = input_ids == self.separator_token_id
            if attention_mask is not None:
                separator_mask = separator_mask & attention_mask.bool()
        hidden = self.hidden_states(input_ids, attention_mask)  # (B,T,H)
        separator_mask = separator_mask.to(hidden.device, torch.bool)
        picked = hidden[separator_mask]  # (S,H)
        if self.step_features:
            if answer_start is None:
                raise ValueError("this PRM reads step features: forward needs answer_start")
            extra = self.step_feature_values(hidden, input_ids, separator_mask, answer_start)
            picked = torch.cat([picked.float(), extra], dim=-1)
        return picked

    def step_feature_values(self, hidden: torch.Tensor, input_ids: torch.Tensor, separator_mask: torch.Tensor,
                            answer_start: torch.Tensor) -> torch.Tensor:
        """``(S, 2)`` float32 per separator: min and mean of the step's token log-probs, divided by 10.

        The step tokens and their log-probs are those of :func:`step_token_logprobs`
        (tied LM head).  A step with no tokens gets 0 for both.  Causal: a step's values
        depend only on tokens up to its separator, so right padding and truncation after
        it change nothing.
        """
        weight = self.backbone.get_input_embeddings().weight
        # the LM-head product in the backbone's dtype (bf16: its logits to ~1e-2, BENCHMARKS "Scoring
        # throughput"), the log-softmax and everything after in float32; `reference_features`: float32 always
        lm_dtype = torch.float32 if self.reference_features else hidden.dtype
        lp, group, at, n_groups = step_token_logprobs(hidden, input_ids, separator_mask, answer_start, weight,
                                                      lm_dtype)
        # log-probs are <= 0, so 0 is the identity of the minimum (and the value of an empty step)
        mins = hidden.new_zeros(n_groups, dtype=torch.float32).scatter_reduce(0, group, lp, "amin")
        sums = hidden.new_zeros(n_groups, dtype=torch.float32).index_add(0, group, lp)
        counts = hidden.new_zeros(n_groups, dtype=torch.float32).index_add(0, group, torch.ones_like(lp))
        return torch.stack([mins[at], sums[at] / counts[at].clamp_min(1.0)], dim=-1) / 10.0

    # ---- persistence
    def save_pretrained(self, save_directory: str | os.PathLike, tokenizer: Any = None) -> pathlib.Path:
        """Write backbone (safetensors), ``heads.safetensors``, ``prm_config.json`` and tokenizer."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("save_pretrained needs a tokenizer (pass tokenizer= or set model.tokenizer)")
        out = pathlib.Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        # transformers 5.x always writes safetensors (no safe_serialization argument);
        # 4.x needs the flag to avoid pytorch_model.bin on old releases.
        try:
            self.backbone.save_pretrained(out, safe_serialization=True)
        except TypeError:
            self.backbone.save_pretrained(out)
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.heads.state_dict().items()}
        save_file(state, str(out / HEADS_NAME), metadata={"format": "pt", "actprm_format_version": str(FORMAT_VERSION)})
        (out / PRM_CONFIG_NAME).write_text(json.dumps(self.prm_config(), indent=2, sort_keys=True) + "\n")
        tokenizer.save_pretrained(out)
        return out

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        *,
        attn_implementation: str | None = None,
    ) -> EnsemblePRM:
        """Load a directory written by :meth:`save_pretrained` (heads are loaded, never re-initialised).

        ``dtype`` applies to the backbone (``None``: the dtype it was saved in);
        the heads are always float32.  The tokenizer is attached as ``model.tokenizer``.
        """
        path = pathlib.Path(directory)
        cfg_path = path / PRM_CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: not an actprm checkpoint directory")
        cfg = read_json_file(cfg_path)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("format_version", -1), int):
            raise ValueError(f"{cfg_path}: not an actprm checkpoint config (expected a JSON object)")
        if int(cfg.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {cfg.get('format_version')} is newer than {FORMAT_VERSION}")
        # before transformers or torch sees the directory: no model code, real safetensors, sizes that agree
        check_model_dir(path)
        backbone_cfg = read_json_file(path / "config.json") if (path / "config.json").is_file() else {}
        hidden = backbone_cfg.get("hidden_size") if isinstance(backbone_cfg, dict) else None
        check_prm_config(path, cfg, hidden if isinstance(hidden, int) else None)
        tokenizer = load_tokenizer(path)
        # safetensors only: never unpickle a pytorch_model.bin someone left in the directory
        kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype) if dtype is not None else "auto",
                                  "use_safetensors": True}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        backbone = AutoModel.from_pretrained(path, trust_remote_code=False, **kwargs)
        sep_token = cfg.get("separator_token", STEP_SEPARATOR)
        sep_id = _single_token_id(tokenizer, sep_token)
        if sep_id is None or sep_id != int(cfg["separator_token_id"]):
            raise ValueError(f"{path}: tokenizer does not map {sep_token!r} to id {cfg['separator_token_id']}")
        model = cls(
            backbone,
            n_heads=int(cfg["n_heads"]),
            separator_token_id=sep_id,
            separator_token=sep_token,
            head_hidden=int(cfg.get("head_hidden", HEAD_HIDDEN)),
            max_length=cfg.get("max_length"),
            preset=cfg.get("preset"),
            seed=cfg.get("seed"),
            init_heads=False,
            tokenizer=tokenizer,
            step_features=cfg.get("step_features") or (),
            head_layers=int(cfg.get("head_layers", HEAD_LAYERS)),
            prompt=cfg.get("prompt") or None,
            source=cfg.get("source") or None,
        )
        state = load_file(str(path / HEADS_NAME))
        model.heads.load_state_dict(state, strict=True)
        model.heads.calibration = check_record(cfg.get("calibration"))
        model.to(device)
        model.eval()
        return model


# --------------------------------------------------------------------------- builders


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    try:
        return names[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


def _seeded_generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def preset_config(preset: str, vocab_size: int, **overrides: Any):
    """The ``Qwen2Config`` of a preset with the given vocabulary size."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    kwargs = dict(PRESETS[preset])
    kwargs.update(overrides)
    return Qwen2Config(vocab_size=int(vocab_size), **kwargs)


def init_model(
    preset: str,
    *,
    n_heads: int = 8,
    seed: int = 0,
    tokenizer: Any = None,
    max_length: int | None = None,
    attn_implementation: str | None = None,
    dtype: torch.dtype | str | None = None,
    step_features: Sequence[str] = (),
    device: str | torch.device = "cpu",
) -> tuple[EnsemblePRM, Any]:
    """A randomly initialised (seeded) PRM of a :data:`PRESETS` shape and its tokenizer.

    ``tokenizer`` defaults to the committed project tokenizer; the separator is
    added to it if missing.  The global torch RNG is left untouched.
    """
    if tokenizer is None:
        tokenizer = load_tokenizer()
    sep_id = ensure_separator(tokenizer)
    overrides: dict[str, Any] = {}
    if tokenizer.pad_token_id is not None:
        overrides["pad_token_id"] = tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        overrides["eos_token_id"] = tokenizer.eos_token_id
    config = preset_config(preset, len(tokenizer), **overrides)
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        backbone = AutoModel.from_config(config, **kwargs)
    if dtype is not None:
        backbone.to(_resolve_dtype(dtype))
    return _with_heads(backbone, tokenizer, sep_id, n_heads, seed, max_length, preset, step_features, device)


def _with_heads(backbone: nn.Module, tokenizer: Any, sep_id: int, n_heads: int, seed: int, max_length: int | None,
                preset: str | None, step_features: Sequence[str], device: str | torch.device
                ) -> tuple[EnsemblePRM, Any]:
    """A PRM of `backbone` with K fresh heads seeded from `seed` + 1, in eval mode on `device`."""
    model = EnsemblePRM(backbone, n_heads=n_heads, separator_token_id=sep_id, max_length=max_length, preset=preset,
                        seed=seed, generator=_seeded_generator(seed + 1), tokenizer=tokenizer,
                        step_features=step_features)
    model.to(device)
    model.eval()
    return model, tokenizer


def from_backbone(
    name_or_path: str | os.PathLike,
    *,
    n_heads: int = 8,
    seed: int = 0,
    max_length: int | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    step_features: Sequence[str] = (),
    device: str | torch.device = "cpu",
    **from_pretrained_kwargs: Any,
) -> tuple[EnsemblePRM, Any]:
    """A PRM on a pretrained backbone (``AutoModel``/``AutoTokenizer.from_pretrained``) with fresh seeded heads.

    Adds the separator to the tokenizer (and the embedding matrix) if missing,
    initialising its embedding from the newline-like token.  ``dtype=None`` loads
    the backbone in the dtype it was saved in.
    """
    check_model_dir(name_or_path)  # no model code, real safetensors, a config that matches its weights
    from_pretrained_kwargs.pop("trust_remote_code", None)  # never True: a model's own code does not run
    tokenizer = load_tokenizer(name_or_path, **from_pretrained_kwargs)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    kwargs["dtype"] = _resolve_dtype(dtype) if dtype is not None else "auto"
    kwargs.setdefault("use_safetensors", True)  # weights from safetensors only, never pickle
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    backbone = AutoModel.from_pretrained(name_or_path, trust_remote_code=False, **kwargs)
    sep_id = ensure_separator(tokenizer, backbone)
    return _with_heads(backbone, tokenizer, sep_id, n_heads, seed, max_length, None, step_features, device)


def load_prm(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> tuple[EnsemblePRM, Any]:
    """``(model, tokenizer)`` from a :meth:`EnsemblePRM.save_pretrained` directory."""
    model = EnsemblePRM.from_pretrained(directory, device=device, dtype=dtype, **kwargs)
    return model, model.tokenizer


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_prm_config(directory: str | os.PathLike, cfg: Any, hidden_size: int | None = None) -> None:
    """`prm_config.json`'s sizes are sane and agree with `heads.safetensors` (read before any tensor is made)."""
    path = pathlib.Path(directory) / PRM_CONFIG_NAME
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    n_heads = positive_int(cfg, "n_heads", path, MAX_HEADS)
    if n_heads is None:
        raise UserError(f"{path}: n_heads is missing")
    head_hidden = positive_int(cfg, "head_hidden", path, MAX_HEAD_HIDDEN, default=HEAD_HIDDEN)
    if not isinstance(cfg.get("separator_token_id"), int) or isinstance(cfg.get("separator_token_id"), bool):
        raise UserError(f"{path}: separator_token_id must be an integer")
    max_length = cfg.get("max_length")
    if max_length is not None:
        positive_int(cfg, "max_length", path, 10**7)
    features = cfg.get("step_features") or []
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise UserError(f"{path}: step_features must be a list of names")
    heads = pathlib.Path(directory) / HEADS_NAME
    if not heads.is_file():
        raise UserError(f"{heads}: missing; not an actprm checkpoint directory")
    n_layers = cfg.get("head_layers", HEAD_LAYERS)
    if not isinstance(n_layers, int) or isinstance(n_layers, bool) or not 0 <= n_layers <= 8:
        raise UserError(f"{path}: head_layers must be an integer from 0 to 8")
    shapes = {k: v["shape"] for k, v in safetensors_header(heads).items()}
    w1 = shapes.get("W1")
    # W1 (K, in, D or 1), then (K, D, D) per further hidden layer, then (K, D, 1)
    widths = [head_hidden] * n_layers + [1]
    expected = {f"W{i + 2}": [n_heads, widths[i], widths[i + 1]] for i in range(n_layers)}
    if (w1 is None or len(w1) != 3 or w1[0] != n_heads or w1[2] != widths[0]
            or any(shapes.get(k) != v for k, v in expected.items())):
        raise UserError(
            f"{path}: n_heads {n_heads}, head_hidden {head_hidden} and head_layers {n_layers} do not match "
            f"{HEADS_NAME} (W1 {w1}, W2 {shapes.get('W2')})"
        )
    if hidden_size is not None:
        extra = sum(STEP_FEATURES.get(f, 0) for f in features)
        if w1[1] != hidden_size + extra:
            raise UserError(f"{heads}: W1 reads {w1[1]} features, the backbone gives {hidden_size + extra}")
