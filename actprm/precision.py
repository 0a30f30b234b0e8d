"""Which floating-point type the backbone runs in: `dtype: auto | float32 | bfloat16`.

`auto` picks bfloat16 where the hardware multiplies it natively — any CUDA device, or a CPU whose
flags show AMX (`amx_bf16`) or AVX512-BF16 (`avx512_bf16`) with torch's oneDNN (mkldnn) backend
available — and float32 otherwise (older x86, ARM, macOS). On such CPUs a bf16 matmul runs several
times faster than fp32 (BENCHMARKS.md, "Scoring throughput"). Only the backbone's weights and
activations change type: the ensemble heads, the step features' LM-head log-probs and every loss
stay float32 (actprm.model, actprm.train).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: CPU flags (/proc/cpuinfo) that mean native bf16 dot products, best first.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The `flags` of the first CPU in /proc/cpuinfo (or in the text given); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:  # not Linux
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


@functools.cache
def cpu_bf16_support() -> str | None:
    """The flag that gives this CPU native bf16 ('amx_bf16' or 'avx512_bf16'), or None (then auto is fp32).

    None also when torch was built without oneDNN, whose kernels are the ones that use it.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    return _bf16_flag(cpu_flags())


def _bf16_flag(flags: set[str]) -> str | None:
    return next((f for f in BF16_CPU_FLAGS if f in flags), None)


def resolve_dtype(name: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """The torch dtype for a `dtype` setting on `device` ('auto'/None: by hardware, see the module doc)."""
    if isinstance(name, torch.dtype):
        return name
    if name is None or name == "auto":
        kind = torch.device(device).type
        if kind == "cuda" or (kind == "cpu" and cpu_bf16_support() is not None):
            return torch.bfloat16
        return torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from auto, {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' / 'bfloat16' (what summaries and provenance record)."""
    return str(dtype).removeprefix("torch.")


def model_dtype(model: torch.nn.Module) -> str:
    """The backbone's dtype name of a loaded scorer (its first parameter's: the backbone registers first)."""
    return dtype_name(next(model.parameters()).dtype)


def training_dtype(cfg, device: str | torch.device) -> torch.dtype:
    """The autocast dtype of a training config (`dtype`, and the older `bf16: false` meaning float32)."""
    if not getattr(cfg, "bf16", True):
        return torch.float32
    return resolve_dtype(getattr(cfg, "dtype", "auto"), device)


def autocast(cfg, device: str | torch.device):
    """bf16 autocast of the forward pass when the training config resolves to bfloat16, else a no-op.

    Weights and optimizer state stay float32; the ensemble heads, the step features and the
    losses run outside autocast in float32 (actprm.model, actprm.train).
    """
    kind = torch.device(device).type
    if training_dtype(cfg, device) == torch.bfloat16:
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------ flat memory of long CPU scoring runs
#: Scoring sees a new matmul shape with nearly every batch, and two caches keyed by shape keep up to 1,024
#: entries each: oneDNN's JIT-compiled primitives (ONEDNN_PRIMITIVE_CACHE_CAPACITY) and PyTorch's ideep
#: computation cache (LRU_CACHE_CAPACITY, the one that grew in bf16). 16 each keeps the hot ones. With
#: both capped and the allocator's free pages handed back after each batch, a bf16 scorer stays flat
#: (15,000 world rows: 465 MB flat, against 632 MB and rising with only the oneDNN cap, 1,257 MB with
#: neither; BENCHMARKS.md, "Precision"). A value in the environment wins.
CACHE_CAPACITY = "16"


def configure_cpu_memory() -> None:
    """Cap oneDNN's and ideep's per-shape caches (read when they are first used: call before the first op)."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", CACHE_CAPACITY)
    os.environ.setdefault("LRU_CACHE_CAPACITY", CACHE_CAPACITY)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def release_cpu_memory() -> None:
    """Hand the allocator's freed pages back to the OS (glibc's malloc_trim; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
