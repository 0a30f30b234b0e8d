"""Other projects' PRM checkpoints as actprm PRM directories, with the same step probabilities.

No code from the source is run: ``config.json`` is read as JSON, the weights with
safetensors, the backbone is built from transformers' own class for its
``model_type`` (never ``trust_remote_code``) and the head weights are mapped onto
:class:`actprm.model.EnsembleHeads`.

| layout                 | source keys                              | actprm heads                                         |
|------------------------|------------------------------------------|------------------------------------------------------|
| `activeprm`            | `score.model.nn1/nn2/nn_out` (E heads)   | the E heads as they are (ReLU MLP H->128->128->1);   |
|                        | `score.reg_model.*`                      | the anchor (heads_init.safetensors)                  |
| `qwen-prm`             | `score.0` (H->H), ReLU, `score.2` (H->2) | 1 hidden layer of width H; output `row1 - row0`      |
| `token-classification` | `score` (H->2, or H->1)                  | linear head `row1 - row0` (or the single row)        |
| `math-shepherd`        | `lm_head` rows of the good/bad tokens    | linear head `lm[good] - lm[bad]` (+ bias difference) |

A 2-way softmax's class-1 probability is ``sigmoid(l1 - l0)``, so a head whose one logit is
the difference of the two rows gives the source's probability exactly (up to float
rounding) and trains with the same loss (binary cross-entropy on that logit).

The prompt format is part of a model and is stored in the PRM directory (prm_config.json,
``prompt``; see actprm.scoring.PROMPT_KEYS): the defaults below are each source's own
(ActivePRM's evaluation system prompt and chat template, Qwen2.5-Math-PRM's, TRL's
``[bos] prompt step "\\n" step "\\n"`` tokenised piece by piece, Math-Shepherd's
``question step " ки\\n" ...``).

``n_heads > 1`` for a single-head source: head 0 is the source's head, heads 1.. are it
plus seeded Gaussian noise of ``perturb`` times each tensor's root-mean-square, so the
ensemble has a spread to start from.
"""

from __future__ import annotations

import json
import math
import pathlib
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import CONFIG_MAPPING, AutoModel

from actprm.errors import UserError
from actprm.io.model_files import read_json_file
from actprm.model import ANCHOR_NAME, EnsemblePRM, _single_token_id
from actprm.scoring import PROMPT_KEYS
from actprm.tokens import tokenizer_as_is

__all__ = [
    "ANCHOR_NAME",
    "LAYOUTS",
    "ImportSummary",
    "convert",
    "detect_layout",
    "import_hint",
    "layout_defaults",
]

LAYOUTS = ("activeprm", "qwen-prm", "token-classification", "math-shepherd")
#: The trainer's anchor file (heads the ActPRM penalty pulls towards; checkpoint layout of `actprm train`).

#: ActivePRM's evaluation system prompt (their worker's default for a model not in its table).
ACTIVEPRM_SYSTEM = ("You are a helpful and harmless assistant. You should think step-by-step and put your "
                    "final answer within \\boxed{}.")
#: Qwen2.5-Math-PRM's system prompt (its model card's usage).
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

# per layout: separator (the score-position token) and prompt settings (actprm.scoring.PROMPT_KEYS)
_DEFAULTS: dict[str, dict[str, Any]] = {
    "activeprm": {"separator": "<extra_0>", "chat_template": True, "system_prompt": ACTIVEPRM_SYSTEM},
    "qwen-prm": {"separator": "<extra_0>", "chat_template": True, "system_prompt": QWEN_PRM_SYSTEM},
    "token-classification": {"separator": "\n", "chat_template": False, "middle": "", "bos": True,
                             "tokenize": "pieces"},
    "math-shepherd": {"separator": "ки", "step_suffix": " ки\n", "chat_template": False, "middle": " ",
                      "tokenize": "joint"},
}
#: The source's tokenizer files, copied into the PRM directory byte for byte (tokenizer_config.json less its
#: auto_map): a tokenizer re-serialised by transformers can split text differently.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja",
                   "chat_template.json")
TOKENIZER_DIRS = ("additional_chat_templates",)
#: The import's own check: steps with newlines, a blank line inside a step and digits.
PROBE_STEPS = ("What is 12 + 30?\n\n12 + 30 = 42.", "Check: 42 - 30 = 12.\n\nSo 42 is right.",
               "\n\nThe answer is 42.\n")
# config.json keys of the sources' own classes that are no backbone setting
_FOREIGN_KEYS = ("auto_map", "architectures", "num_ensemble", "rr_token", "rr_token_id", "learning_probability",
                 "regularization_lambda", "model_type", "transformers_version")


def layout_defaults(layout: str) -> dict[str, Any]:
    """The separator and prompt settings a layout's own code uses."""
    if layout not in _DEFAULTS:
        raise UserError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    return dict(_DEFAULTS[layout])


@dataclass
class ImportSummary:
    """What :func:`convert` wrote."""

    layout: str
    output: pathlib.Path
    n_heads: int
    head_layers: int
    backbone_model_type: str
    separator: str
    prompt: dict[str, Any]
    anchor: bool  # heads_init.safetensors written (ActivePRM's reg_model)
    max_abs_diff: float | None = None  # the source head's formula vs the imported heads on a probe text
    perturbed_heads: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def read_config(src: pathlib.Path) -> dict[str, Any]:
    path = src / "config.json"
    if not path.is_file():
        raise UserError(f"{src}: no config.json (not a transformers checkpoint directory)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: not a JSON object")
    return cfg


def read_weights(src: pathlib.Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files (one file or an index of shards)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{index}: not a safetensors index") from None
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        files = sorted(p.name for p in src.glob("*.safetensors"))
    if not files:
        raise UserError(f"{src}: no safetensors weights (pickled .bin checkpoints are never loaded; convert "
                        "them to safetensors first)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        try:
            state.update(load_file(str(src / name)))
        except Exception as exc:  # noqa: BLE001 - a corrupt or missing shard is the user's to fix
            raise UserError(f"{src / name}: cannot read ({' '.join(str(exc).split())[:160]})") from None
    return state


def detect_layout(config: dict[str, Any], state_keys: set[str] | None = None) -> str | None:
    """The layout of a checkpoint from its config's architectures (and keys), or None."""
    arch = " ".join(config.get("architectures") or [])
    keys = state_keys or set()
    if "EnsemblePRM" in arch or "score.model.nn1.weight" in keys:
        return "activeprm"
    if "ProcessRewardModel" in arch or "score.0.weight" in keys:
        return "qwen-prm"
    if "ForTokenClassification" in arch:
        return "token-classification"
    if "ForCausalLM" in arch:
        return "math-shepherd"
    return None


def import_hint(path: str | pathlib.Path) -> str | None:
    """For a directory that is another project's PRM checkpoint: the `actprm import` command that converts it."""
    cfg_path = pathlib.Path(path) / "config.json"
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    layout = detect_layout(config) if isinstance(config, dict) else None
    if layout is None:
        return None
    if layout == "math-shepherd":
        return (f"a causal LM: score it as an implicit PRM (--scorer implicit), or, if it is a Math-Shepherd-style "
                f"PRM, convert it with actprm import --from math-shepherd {path} --output DIR")
    return f"it looks like a {layout} checkpoint: convert it with actprm import --from {layout} {path} --output DIR"


def _need(state: dict[str, torch.Tensor], key: str, layout: str) -> torch.Tensor:
    if key not in state:
        raise UserError(f"not a {layout} checkpoint: no tensor {key!r}")
    return state[key].detach().to(torch.float32)


# --------------------------------------------------------------------------- backbone


def check_model_type(config: dict[str, Any]) -> str:
    """The config's model_type if transformers ships it (asked before transformers reads anything)."""
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UserError(f"backbone model_type {str(model_type)[:80]!r} needs code transformers does not have "
                        "(remote code is never run)")
    return model_type


def build_backbone(config: dict[str, Any], state: dict[str, torch.Tensor], prefix: str = "model."):
    """transformers' own base model for ``config['model_type']`` with the ``prefix`` weights loaded."""
    model_type = check_model_type(config)
    kwargs = {k: v for k, v in config.items() if k not in _FOREIGN_KEYS}
    bb_config = CONFIG_MAPPING[model_type](**kwargs)
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise UserError(f"no backbone weights (no tensor starts with {prefix!r})")
    dtype = next(iter(weights.values())).dtype
    with torch.random.fork_rng(devices=[]):
        backbone = AutoModel.from_config(bb_config, dtype=dtype if dtype.is_floating_point else None)
    expected = set(backbone.state_dict())
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"backbone weights do not fit transformers' {type(backbone).__name__}: {what}")
    backbone.load_state_dict(weights, strict=True)
    backbone.eval()
    return backbone


# --------------------------------------------------------------------------- heads


def _diff_rows(w: torch.Tensor, b: torch.Tensor | None, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (L, H) classifier with L = 2 (row 1 - row 0) or L = 1 as one logit: (W (H,), b scalar)."""
    if w.dim() != 2 or w.shape[0] not in (1, 2):
        raise UserError(f"{layout}: expected a classifier of 1 or 2 labels, got a weight of shape {tuple(w.shape)}")
    if w.shape[0] == 1:
        return w[0], (b[0] if b is not None else torch.zeros(()))
    bias = (b[1] - b[0]) if b is not None else torch.zeros(())
    return w[1] - w[0], bias


def source_heads(layout: str, state: dict[str, torch.Tensor], config: dict[str, Any], tokenizer: Any,
                 opts: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int, int, dict[str, torch.Tensor] | None]:
    """(one EnsembleHeads state dict, head_hidden, head_layers, anchor state or None) for the source's heads."""
    if layout == "activeprm":
        names = [("nn1", 1), ("nn2", 2), ("nn_out", 3)]
        heads = {}
        anchor = {}
        for name, i in names:
            heads[f"W{i}"] = _need(state, f"score.model.{name}.weight", layout)
            heads[f"b{i}"] = _need(state, f"score.model.{name}.bias", layout)
            for kind, short in (("weight", "W"), ("bias", "b")):
                key = f"score.reg_model.{name}.{kind}"
                if key in state:
                    anchor[f"{short}{i}"] = state[key].detach().to(torch.float32)
        act = str(config.get("activation", "relu")).lower()
        if act != "relu":
            raise UserError(f"activeprm: activation {act!r} is not one actprm's heads have (relu)")
        if heads["W1"].dim() != 3:
            raise UserError(f"activeprm: expected stacked (E, in, out) head weights, got {tuple(heads['W1'].shape)}")
        return heads, int(heads["W1"].shape[2]), 2, (anchor if len(anchor) == 6 else None)
    if layout == "qwen-prm":
        w0, b0 = _need(state, "score.0.weight", layout), _need(state, "score.0.bias", layout)
        w2 = _need(state, "score.2.weight", layout)
        b2 = state.get("score.2.bias")
        w, b = _diff_rows(w2, None if b2 is None else b2.to(torch.float32), layout)
        heads = {"W1": w0.t().unsqueeze(0).contiguous(), "b1": b0.unsqueeze(0),
                 "W2": w.view(1, -1, 1), "b2": b.reshape(1, 1)}
        return heads, int(w0.shape[0]), 1, None
    if layout == "token-classification":
        w = _need(state, "score.weight", layout)
        b = state.get("score.bias")
        w, b = _diff_rows(w, None if b is None else b.to(torch.float32), layout)
        return {"W1": w.view(1, -1, 1), "b1": b.reshape(1, 1)}, 1, 0, None
    if layout == "math-shepherd":
        if "lm_head.weight" in state:
            lm = _need(state, "lm_head.weight", layout)
        elif config.get("tie_word_embeddings") and "model.embed_tokens.weight" in state:
            lm = _need(state, "model.embed_tokens.weight", layout)
        else:
            raise UserError("math-shepherd: no lm_head.weight (and the embeddings are not tied)")
        good, bad = (token_id(tokenizer, opts[k], k) for k in ("good_token", "bad_token"))
        lm_bias = state.get("lm_head.bias")
        b = (lm_bias[good] - lm_bias[bad]).float() if lm_bias is not None else torch.zeros(())
        return {"W1": (lm[good] - lm[bad]).view(1, -1, 1), "b1": b.reshape(1, 1)}, 1, 0, None
    raise UserError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")


def token_id(tokenizer: Any, token: str | int, what: str = "token") -> int:
    """A token's id: an int (or a string of digits) as is, else the single id the tokenizer gives it."""
    if isinstance(token, int) or (isinstance(token, str) and token.isdigit()):
        tid = int(token)
        if not 0 <= tid < len(tokenizer):
            raise UserError(f"{what} id {tid} is outside the vocabulary (0..{len(tokenizer) - 1})")
        return tid
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise UserError(f"{what} {token!r} is {len(ids)} tokens for this tokenizer; give its id instead")
    return int(ids[0])


def perturbed(heads: dict[str, torch.Tensor], n_heads: int, scale: float, seed: int) -> dict[str, torch.Tensor]:
    """K copies of a single head (K = 1 in every tensor): head 0 as is, heads 1.. plus seeded noise
    of ``scale`` times each tensor's root-mean-square (the fan-in init std where that is 0)."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name in sorted(heads, key=lambda n: (n[1:], n[0])):  # W1, b1, W2, b2, ... : a fixed draw order
        t = heads[name]
        rms = float(t.pow(2).mean().sqrt())
        if rms == 0.0:
            rms = 1.0 / (2.0 * math.sqrt(max(1, heads["W" + name[1:]].shape[1])))
        noise = torch.randn((n_heads - 1, *t.shape[1:]), generator=gen) * (scale * rms)
        out[name] = torch.cat([t, t.expand(n_heads - 1, *t.shape[1:]) + noise]).contiguous()
    return out


# --------------------------------------------------------------------------- convert


def _probe_check(out: pathlib.Path, src: pathlib.Path, source_model, layout: str,
                 heads: dict[str, torch.Tensor]) -> float:
    """Max |p_source - p_actprm| of head 0 at the step ends of a probe text (PROBE_STEPS: newlines, a
    blank line inside a step, digits): the source's tokenizer.json as it is, its backbone and its head's
    own formula (MLP + softmax of two rows / sigmoid) vs the written directory as actprm loads it."""

    sep = source_model.separator_token
    text = sep.join(PROBE_STEPS) + sep
    src_ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(text, add_special_tokens=False).ids[:256]
    loaded = EnsemblePRM.from_pretrained(out)
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)[:256]
    if ids != src_ids:
        at = next((i for i, (a, b) in enumerate(zip(ids, src_ids)) if a != b), min(len(ids), len(src_ids)))
        raise UserError(f"the imported tokenizer splits a probe text unlike {src}'s tokenizer.json (token {at})")
    t = torch.tensor([src_ids])
    at_sep = t[0] == loaded.separator_token_id
    with torch.no_grad():
        hidden = source_model.hidden_states(t).float()[0][at_sep]  # (S, H)
        ours = torch.sigmoid(loaded(t).float())[:, 0]
        if layout == "activeprm":
            x = torch.relu(hidden @ heads["W1"][0] + heads["b1"][0])
            x = torch.relu(x @ heads["W2"][0] + heads["b2"][0])
            ref = torch.sigmoid(x @ heads["W3"][0] + heads["b3"][0])[:, 0]
        else:
            src_f = heads["_source"]
            x = hidden
            if "score0" in src_f:
                x = torch.relu(x @ src_f["score0"].t() + src_f["score0_b"])
            logits = x @ src_f["out"].t() + src_f["out_b"]
            ref = torch.softmax(logits, dim=-1)[:, -1] if logits.shape[1] == 2 else torch.sigmoid(logits[:, 0])
    if ref.numel() == 0 or ours.shape != ref.shape:
        raise UserError(f"the probe text has no {sep!r} step ends for the imported model to score")
    return float((ours - ref).abs().max())


def copy_tokenizer(src: pathlib.Path, out: pathlib.Path) -> bool:
    """Put the source's tokenizer files in ``out`` byte for byte, in place of those save_pretrained wrote.

    A tokenizer_config.json ``auto_map`` is left out (every verb refuses a directory with one); True if so.
    """
    for name in TOKENIZER_FILES:
        (out / name).unlink(missing_ok=True)
    for name in TOKENIZER_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)
    stripped = False
    for name in TOKENIZER_FILES:
        if not (src / name).is_file():
            continue
        if name == "tokenizer_config.json":
            cfg = read_json_file(src / name)
            if isinstance(cfg, dict) and "auto_map" in cfg:
                del cfg["auto_map"]
                (out / name).write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
                stripped = True
                continue
        shutil.copyfile(src / name, out / name)  # follows links (a hub cache's snapshot)
    for name in TOKENIZER_DIRS:
        if (src / name).is_dir():
            shutil.copytree(src / name, out / name)
    return stripped


def _source_formula(layout: str, state: dict[str, torch.Tensor], config: dict[str, Any], tokenizer: Any,
                    opts: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The source head's own tensors (for the probe check): the final rows as the source has them."""
    f32 = torch.float32
    if layout == "qwen-prm":
        b2 = state.get("score.2.bias")
        w2 = state["score.2.weight"].to(f32)
        return {"score0": state["score.0.weight"].to(f32), "score0_b": state["score.0.bias"].to(f32),
                "out": w2, "out_b": b2.to(f32) if b2 is not None else torch.zeros(w2.shape[0])}
    if layout == "token-classification":
        w = state["score.weight"].to(f32)
        b = state.get("score.bias")
        return {"out": w, "out_b": b.to(f32) if b is not None else torch.zeros(w.shape[0])}
    lm = state["lm_head.weight"] if "lm_head.weight" in state else state["model.embed_tokens.weight"]
    good, bad = (token_id(tokenizer, opts[k], k) for k in ("good_token", "bad_token"))
    bias = state.get("lm_head.bias")
    # softmax over [good, bad] at index 0 = class "good": written as rows [bad, good] so the last is good
    return {"out": lm[[bad, good]].to(f32),
            "out_b": bias[[bad, good]].to(f32) if bias is not None else torch.zeros(2)}


def convert(src: str | pathlib.Path, output: str | pathlib.Path, layout: str | None = None, *,
            n_heads: int | None = None, perturb: float = 0.01, seed: int = 0,
            separator: str | None = None, prompt: dict[str, Any] | None = None,
            good_token: str = "+", bad_token: str = "-", max_length: int | None = None,
            check: bool = True) -> ImportSummary:
    """Write an actprm PRM directory at ``output`` from the checkpoint at ``src``.

    ``layout`` None: detected from ``config.json``'s architectures.  ``separator`` and
    ``prompt`` (PROMPT_KEYS; a None value keeps the layout's default) override the
    layout's format.  ``n_heads``: ActivePRM keeps its own E (giving another is an
    error); a single-head source becomes ``n_heads`` heads (default 1, exact).
    """
    src = pathlib.Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a directory")
    config = read_config(src)
    check_model_type(config)  # before transformers reads anything: no warning ahead of the refusal
    state = read_weights(src)
    detected = detect_layout(config, set(state))
    if layout is None and detected == "math-shepherd":  # any causal LM looks like one: make the user say so
        raise UserError(f"{src}: a causal LM; if it is a Math-Shepherd-style PRM, pass --from math-shepherd")
    layout = layout or detected
    if layout is None:
        raise UserError(f"{src}: cannot tell its layout from config.json (architectures "
                        f"{config.get('architectures')}); pass --from {'|'.join(LAYOUTS)}")
    settings = layout_defaults(layout)
    if layout == "activeprm" and config.get("rr_token"):
        settings["separator"] = str(config["rr_token"])  # their config's step token
    sep = separator if separator is not None else settings.pop("separator")
    settings.pop("separator", None)
    for k, v in (prompt or {}).items():
        if k not in PROMPT_KEYS:
            raise UserError(f"unknown prompt setting {k!r}; choose from {', '.join(PROMPT_KEYS)}")
        if v is not None:
            settings[k] = v
    if layout == "math-shepherd" and "bos" not in settings:
        settings["bos"] = None  # decided from the tokenizer below

    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src}: a fast tokenizer (tokenizer.json) is needed")
    try:
        tokenizer = tokenizer_as_is(src)  # its tokenizer.json as it is; no code from src runs
    except RecursionError:
        raise UserError(f"{src}: the tokenizer files nest too deep to be read") from None
    except Exception as exc:  # noqa: BLE001 - a broken tokenizer is the user's to fix
        raise UserError(f"{src}: cannot load its tokenizer ({' '.join(str(exc).split())[:160]})") from None
    sep_id = _single_token_id(tokenizer, sep)
    if sep_id is None:
        raise UserError(f"separator {sep!r} is not a single token of {src}'s tokenizer (set it with --separator)")
    if settings.get("bos") is None and "bos" in settings:
        # Math-Shepherd tokenises with the tokenizer's own special tokens: a bos iff it adds one
        probe = tokenizer.encode("a")
        settings["bos"] = bool(tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id)

    opts = {"good_token": good_token, "bad_token": bad_token}
    heads, head_hidden, head_layers, anchor = source_heads(layout, state, config, tokenizer, opts)
    source_k = int(heads["W1"].shape[0])
    k = source_k if n_heads is None else int(n_heads)
    if k < 1:
        raise UserError(f"n_heads must be >= 1, got {k}")
    n_perturbed = 0
    if source_k > 1 and k != source_k:
        raise UserError(f"{layout}: the checkpoint has {source_k} heads; n_heads must be {source_k} or unset")
    if source_k == 1 and k > 1:
        heads = perturbed(heads, k, perturb, seed)
        n_perturbed = k - 1

    backbone = build_backbone(config, state, prefix="model.")
    bb_vocab = backbone.get_input_embeddings().weight.shape[0]
    if sep_id >= bb_vocab:
        raise UserError(f"separator {sep!r} has id {sep_id}, outside the backbone's {bb_vocab} embeddings")
    hidden = int(backbone.config.hidden_size)
    if heads["W1"].shape[1] != hidden:
        raise UserError(f"{layout}: head input width {heads['W1'].shape[1]} != backbone hidden size {hidden}")
    source = {"layout": layout, "path": str(src), "architectures": config.get("architectures")}
    model = EnsemblePRM(backbone, n_heads=k, separator_token_id=sep_id, separator_token=sep,
                        head_hidden=head_hidden, head_layers=head_layers, max_length=max_length,
                        init_heads=False, tokenizer=tokenizer, prompt=settings, source=source)
    model.heads.load_state_dict(heads, strict=True)
    model.eval()
    out = pathlib.Path(output)
    model.save_pretrained(out)
    stripped = copy_tokenizer(src, out)
    if anchor is not None:
        save_file({n: t.contiguous() for n, t in anchor.items()}, str(out / ANCHOR_NAME))
    diff = None
    if check:
        probe_heads = dict(heads)
        if layout != "activeprm":
            probe_heads["_source"] = _source_formula(layout, state, config, tokenizer, opts)
        diff = _probe_check(out, src, model, layout, probe_heads)
    return ImportSummary(layout=layout, output=out, n_heads=k, head_layers=head_layers,
                         backbone_model_type=str(config.get("model_type")), separator=sep, prompt=settings,
                         anchor=anchor is not None, max_abs_diff=diff, perturbed_heads=n_perturbed,
                         extra={"auto_map_left_out": stripped})
