"""Where models come from and go: the device, loading any scorer, and trainer checkpoints.

A PRM directory is what `EnsemblePRM.save_pretrained` writes (docs/ensemble-and-rule.md, "The ensemble PRM"); a
training round adds its optimizer moments, the anchor heads and `trainer_state.json`
(docs/loop-and-stream.md, "Training rounds"). Everything is read with safetensors, never with pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from actprm.errors import UserError
from actprm.implicit import load_implicit
from actprm.importers import import_hint
from actprm.io.writers import replaced_dir
from actprm.model import ANCHOR_NAME, PRM_CONFIG_NAME, load_prm
from actprm.precision import configure_cpu_memory, resolve_dtype
from actprm.scoring import default_batch_tokens
from actprm.shipped import DEFAULT_MODEL_NAME, SHIPPED_BACKBONE, default_prm_path

OPTIMIZER_NAME = "optimizer.safetensors"
STATE_NAME = "trainer_state.json"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (use --device cpu)")
    return name


def load_scoring_model(path: str | None, device: str, implicit: dict | None = None, dtype: str = "auto"):
    """(model, tokenizer) from a PRM directory (None: the shipped default PRM); a user error if it is not one.
    `implicit`: the implicit scorer's settings (ScorerConfig.implicit_settings): load `path` (None: the
    shipped backbone) as an implicit PRM instead (actprm.implicit). `dtype`: the backbone's (auto | float32 |
    bfloat16, actprm.precision.resolve_dtype)."""
    dtype = resolve_dtype(dtype, device)
    configure_cpu_memory()
    if implicit is not None:
        return load_implicit(path, device, dtype=dtype, **implicit)
    path = path or str(default_prm_path())
    if not (Path(path) / PRM_CONFIG_NAME).is_file():
        hint = import_hint(path) or "make one with actprm init-model"
        raise UserError(f"{path}: not a PRM directory (no {PRM_CONFIG_NAME}); {hint}")
    try:
        return load_prm(path, device=device, dtype=dtype)
    except (OSError, ValueError) as exc:  # missing/foreign weights (no safetensors), bad config
        detail = " ".join(str(exc).split())
        raise UserError(f"{path}: cannot load the PRM ({detail[:200]})") from None


def load_for_scoring(cfg) -> tuple[str, torch.nn.Module, object, str, int]:
    """(device, model, tokenizer, model name, batch tokens) for a job config with
    `device`, `threads`, `model` and `batch_tokens` (score, evaluate)."""
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    implicit = cfg.implicit_settings()
    model, tokenizer = load_scoring_model(cfg.model, device, implicit, cfg.dtype)
    name = cfg.model or (DEFAULT_MODEL_NAME if implicit is None else SHIPPED_BACKBONE)
    return device, model, tokenizer, name, cfg.batch_tokens or default_batch_tokens(device)


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


def load_checkpoint(path: str | None, device: torch.device):
    """(model, tokenizer, anchor heads, optimizer state or None, trainer state or {})."""
    model, tokenizer = load_scoring_model(path, "cpu", dtype="float32")  # float32 weights; bf16 is autocast
    src = Path(path) if path else None
    anchor = None
    if src is not None and (src / ANCHOR_NAME).is_file():
        anchor = load_file(str(src / ANCHOR_NAME))
    if anchor is None:
        anchor = {k: v.detach().float().clone() for k, v in model.heads.state_dict().items()}
    opt = read_optimizer_state(path)
    return model, tokenizer, anchor, opt, read_trainer_state(path)


def save_checkpoint(out: Path, model, tokenizer, optimizer, anchor: dict[str, torch.Tensor],
                    state: dict[str, Any], *, optimizer_state: dict[str, torch.Tensor] | None = None,
                    extra: Callable[[Path], None] | None = None) -> None:
    """Write the checkpoint beside `out`, then move it into place (a killed run leaves no half checkpoint).

    The optimizer's moments come from `optimizer`, or ready-made (`optimizer_state`, keyed as the file).
    `extra(staging)` writes more files into it (the one pass's state). Whether `out` may be replaced is
    decided before training (check_train_paths).
    """
    with replaced_dir(out) as staging:
        model.save_pretrained(staging, tokenizer=tokenizer)
        moments = optimizer_state if optimizer_state is not None else optimizer_state_dict(model, optimizer)
        save_file(moments, str(staging / OPTIMIZER_NAME))
        save_file({k: v.detach().cpu().contiguous() for k, v in anchor.items()}, str(staging / ANCHOR_NAME))
        (staging / STATE_NAME).write_text(json.dumps(state, indent=2) + "\n")
        if extra is not None:
            extra(staging)


def read_optimizer_state(path: str | None) -> dict[str, torch.Tensor] | None:
    """The optimizer moments a checkpoint holds (None: it has none, e.g. the shipped PRM)."""
    src = Path(path) / OPTIMIZER_NAME if path else None
    return load_file(str(src)) if src is not None and src.is_file() else None


def read_trainer_state(path: str | None) -> dict[str, Any]:
    """A checkpoint's trainer_state.json ({} for a model no round has trained)."""
    src = Path(path) / STATE_NAME if path else None
    return json.loads(src.read_text()) if src is not None and src.is_file() else {}
