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
from torch import nn

from actprm.tokens import STEP_SEPARATOR

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FORMAT_VERSION",
    "HEADS_NAME",
    "HEAD_HIDDEN",
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

_COMMON = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_cache": False}

#: ``Qwen2Config`` keyword arguments per preset (``vocab_size`` comes from the tokenizer).
#: Parameter counts with the committed 4096-token vocabulary (backbone + K=8 heads):
#: tiny 385,600 + 199,688; small 13,377,024 + 658,440; qwen2-0.5b 361,568,128 + 1,051,656
#: (the real Qwen2-0.5B has 494M parameters, most of the difference being its 151,936-token
#: embedding).  ``use_cache`` is off: a scorer never decodes.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        max_position_embeddings=4096,
        **_COMMON,
    ),
    # the shipped world backbone (pipelines/pretrain_backbone.py): a causal LM with tied embeddings
    "world": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=1024,
        **{**_COMMON, "tie_word_embeddings": True},
    ),
    "small": dict(
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=1408,
        max_position_embeddings=4096,
        **_COMMON,
    ),
    # The shape of Qwen2-0.5B (random init, for GPU throughput measurements only).
    "qwen2-0.5b": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        **_COMMON,
    ),
}


# --------------------------------------------------------------------------- heads


class EnsembleHeads(nn.Module):
    """K independent MLP heads ``H -> 128 -> 128 -> 1`` evaluated in one batched op.

    Parameters are stacked along a leading head axis: ``W1 (K,H,D)``, ``b1 (K,D)``,
    ``W2 (K,D,D)``, ``b2 (K,D)``, ``W3 (K,D,1)``, ``b3 (K,1)`` with ``D = head_hidden``.
    Weights are initialised from a normal with std ``1/(2*sqrt(fan_in))`` truncated
    at +-2 std; biases are zero.  :meth:`forward` computes in float32 whatever the
    parameter or input dtype, and outside any autocast region.
    """

    def __init__(
        self,
        hidden_size: int,
        n_heads: int = 8,
        head_hidden: int = HEAD_HIDDEN,
        *,
        generator: torch.Generator | None = None,
        init: bool = True,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.hidden_size = int(hidden_size)
        self.n_heads = int(n_heads)
        self.head_hidden = int(head_hidden)
        k, h, d = self.n_heads, self.hidden_size, self.head_hidden
        f32 = torch.float32
        self.W1 = nn.Parameter(torch.zeros(k, h, d, dtype=f32))
        self.b1 = nn.Parameter(torch.zeros(k, d, dtype=f32))
        self.W2 = nn.Parameter(torch.zeros(k, d, d, dtype=f32))
        self.b2 = nn.Parameter(torch.zeros(k, d, dtype=f32))
        self.W3 = nn.Parameter(torch.zeros(k, d, 1, dtype=f32))
        self.b3 = nn.Parameter(torch.zeros(k, 1, dtype=f32))
        if init:
            self.reset_parameters(generator=generator)

    @staticmethod
    def init_std(fan_in: int) -> float:
        return 1.0 / (2.0 * math.sqrt(fan_in))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for w in (self.W1, self.W2, self.W3):
            std = self.init_std(w.shape[1])  # fan_in: the input width of the layer
            nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std, generator=generator)
        for b in (self.b1, self.b2, self.b3):
            b.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h (N, H)`` -> logits ``(N, K)`` (float32)."""
        if h.dim() != 2 or h.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden states of shape (N, {self.hidden_size}), got {tuple(h.shape)}")
        with _no_autocast(h.device.type):
            x = h.float()
            W1, W2, W3 = self.W1.float(), self.W2.float(), self.W3.float()
            b1, b2, b3 = self.b1.float(), self.b2.float(), self.b3.float()
            z = torch.relu(torch.einsum("nh,khd->knd", x, W1) + b1.unsqueeze(1))  # (K,N,D)
            z = torch.relu(torch.baddbmm(b2.unsqueeze(1), z, W2))  # (K,N,D)
            out = torch.baddbmm(b3.unsqueeze(1), z, W3)  # (K,N,1)
            return out.squeeze(-1).transpose(0, 1).contiguous()  # (N,K)

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, n_heads={self.n_heads}, head_hidden={self.head_hidden}"


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
    from tokenizers import AddedToken

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
        self.heads = EnsembleHeads(hidden + n_extra, n_heads, head_hidden, generator=generator, init=init_heads)
        self.separator_token_id = int(separator_token_id)
        self.separator_token = separator_token
        max_pos = getattr(backbone.config, "max_position_embeddings", None)
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, max_pos) if max_pos else DEFAULT_MAX_LENGTH
        self.max_length = int(max_length)
        self.preset = preset
        self.seed = seed
        self.tokenizer = tokenizer
        #: True: step features as before issue 23 (the LM-head product in float32 whatever the backbone's dtype)
        self.reference_features = False

    # ---- properties
    @property
    def n_heads(self) -> int:
        return self.heads.n_heads

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def prm_config(self) -> dict[str, Any]:
        return {
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

    # ---- forward
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        separator_mask: torch.Tensor | None = None,
        answer_start: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(n_separators_total, K)`` at the ``True`` entries of ``separator_mask``.

        ``separator_mask`` (bool, same shape as ``input_ids``) defaults to
        ``input_ids == separator_token_id`` restricted to ``attention_mask``; pass
        it explicitly to ignore separators that are not step ends.
        ``answer_start`` (long, ``(B,)``): index of each row's first step token;
        needed only by models with step features.
        """
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
        return self.heads(picked)

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
        from safetensors.torch import save_file

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
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoTokenizer

        path = pathlib.Path(directory)
        cfg_path = path / PRM_CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: not an actprm checkpoint directory")
        cfg = json.loads(cfg_path.read_text())
        if int(cfg.get("format_version", -1)) > FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {cfg.get('format_version')} is newer than {FORMAT_VERSION}")
        tokenizer = AutoTokenizer.from_pretrained(path)
        # safetensors only: never unpickle a pytorch_model.bin someone left in the directory
        kwargs: dict[str, Any] = {"dtype": _resolve_dtype(dtype) if dtype is not None else "auto",
                                  "use_safetensors": True}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        backbone = AutoModel.from_pretrained(path, **kwargs)
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
        )
        state = load_file(str(path / HEADS_NAME))
        model.heads.load_state_dict(state, strict=True)
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
    from transformers import Qwen2Config

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
    from transformers import AutoModel

    if tokenizer is None:
        from actprm.tokens import load_tokenizer

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
    model = EnsemblePRM(
        backbone,
        n_heads=n_heads,
        separator_token_id=sep_id,
        max_length=max_length,
        preset=preset,
        seed=seed,
        generator=_seeded_generator(seed + 1),
        tokenizer=tokenizer,
        step_features=step_features,
    )
    if dtype is not None:
        model.backbone.to(_resolve_dtype(dtype))
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
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **from_pretrained_kwargs)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    kwargs["dtype"] = _resolve_dtype(dtype) if dtype is not None else "auto"
    kwargs.setdefault("use_safetensors", True)  # weights from safetensors only, never pickle
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    backbone = AutoModel.from_pretrained(name_or_path, **kwargs)
    sep_id = ensure_separator(tokenizer, backbone)
    model = EnsemblePRM(
        backbone,
        n_heads=n_heads,
        separator_token_id=sep_id,
        max_length=max_length,
        preset=None,
        seed=seed,
        generator=_seeded_generator(seed + 1),
        tokenizer=tokenizer,
        step_features=step_features,
    )
    model.to(device)
    model.eval()
    return model, tokenizer


def load_prm(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> tuple[EnsemblePRM, Any]:
    """``(model, tokenizer)`` from a :meth:`EnsemblePRM.save_pretrained` directory."""
    model = EnsemblePRM.from_pretrained(directory, device=device, dtype=dtype, **kwargs)
    return model, model.tokenizer


def default_backbone_path() -> pathlib.Path:
    """The world's policy backbone shipped in the package (a causal LM; pipelines/pretrain_backbone.py)."""
    import importlib.resources

    return pathlib.Path(str(importlib.resources.files("actprm") / "assets" / "backbone"))


def default_prm_path() -> pathlib.Path:
    """The default PRM shipped in the package: the world backbone with K=8 seeded heads."""
    return default_backbone_path().parent / "prm"


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
