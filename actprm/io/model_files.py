"""Checks on a model directory made before transformers or torch is asked to load it.

A model directory is input like any other: it can be hostile or broken. Before anything is loaded:

- no model code runs: a `config.json` or `tokenizer_config.json` with an `auto_map` (classes in a `.py`
  file of the directory or a hub repository), or a `model_type` this transformers does not know, is
  refused in one line; every `from_pretrained` also passes `trust_remote_code=False`,
  so transformers never asks "Do you wish to run the custom code?";
- weights files must be safetensors (a header that parses and tensors that fit in the file);
- sizes written in the configs are checked against the weights before anything is allocated
  (`prm_config.json` saying `n_heads: 1e9` must not try to allocate 66 TB).

Every failure is a `UserError` naming the file and the reason.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from actprm.errors import UserError

#: Largest safetensors header read (the format's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000
#: Bounds of the sizes a PRM config may name.
MAX_HEADS = 4096
MAX_HEAD_HIDDEN = 65_536
#: A config may describe at most this many times the parameters its weights hold (+ slack).
CONFIG_SLACK_BYTES = 64 * 2**20

#: Bits per element of each safetensors dtype (the format's own list); any other dtype is refused.
SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
                    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
                    "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}

_CONFIG_FILES = ("config.json", "tokenizer_config.json", "generation_config.json", "preprocessor_config.json")


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json_file(path: Path, what: str | None = None, max_bytes: int = 50 * 2**20) -> Any:
    """A small JSON file as Python; a UserError if it is too large, not UTF-8 or not JSON."""
    what = what or str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UserError(f"{what}: {size} bytes, over the limit of {max_bytes} for a config file")
        text = path.read_text(encoding="utf-8")
        return json.loads(text)
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{what}: cannot be read as JSON ({_short(str(exc) or type(exc).__name__)})") from None


def _known_model_types() -> set[str]:
    return set(CONFIG_MAPPING_NAMES)


def _auto_map_targets(auto_map: Any) -> str:
    values: list[str] = []
    if isinstance(auto_map, dict):
        for v in auto_map.values():
            values.extend(v if isinstance(v, (list, tuple)) else [v])
    return ", ".join(sorted({str(v) for v in values if v})) or repr(auto_map)


def check_no_remote_code(name_or_path: str | os.PathLike) -> None:
    """Refuse a local model directory whose configs would make transformers import code from it.

    A name that is not a local directory (a hub name) is left to `trust_remote_code=False`, which
    makes transformers refuse custom code with an error instead of asking.
    """
    directory = Path(name_or_path)
    if not directory.is_dir():
        return
    for fname in _CONFIG_FILES:
        path = directory / fname
        if not path.is_file():
            continue
        cfg = read_json_file(path)
        if not isinstance(cfg, dict):
            raise UserError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
        if "auto_map" in cfg:
            raise UserError(
                f"{path}: asks to run the model's own code (auto_map -> {_short(_auto_map_targets(cfg['auto_map']), 120)}); "
                "actprm never runs code from a model directory: use a model of an architecture transformers ships"
            )
        if fname == "config.json":
            model_type = cfg.get("model_type")
            if not isinstance(model_type, str) or model_type not in _known_model_types():
                raise UserError(
                    f"{path}: model_type {_short(repr(model_type), 80)} is not an architecture this transformers "
                    "knows; actprm never runs code from a model directory"
                )


def safetensors_header(path: Path) -> dict[str, Any]:
    """The parsed header of a safetensors file: {tensor name: {dtype, shape, data_offsets}} (no `__metadata__`).

    Reads only the header; a UserError if the file is not safetensors or its tensors do not fit in it.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path}: not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or 8 + n > size:
                raise UserError(f"{path}: not a safetensors file (header length {n} does not fit a {size}-byte file)")
            raw = f.read(n)
        header = json.loads(raw.decode("utf-8"))
    except UserError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"{path}: not a safetensors file ({_short(str(exc) or type(exc).__name__)})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_size = size - 8 - n
    tensors: dict[str, Any] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) for o in info["data_offsets"])
              and 0 <= info["data_offsets"][0] <= info["data_offsets"][1] <= data_size)
        if not ok:
            raise UserError(f"{path}: not a valid safetensors file (tensor {_short(repr(name), 60)} is malformed "
                            "or lies outside the file)")
        bits = SAFETENSORS_BITS.get(info.get("dtype"))
        if bits is None:
            raise UserError(f"{path}: not a valid safetensors file (tensor {_short(repr(name), 60)} has unknown "
                            f"dtype {_short(repr(info.get('dtype')), 40)})")
        nbytes = info["data_offsets"][1] - info["data_offsets"][0]
        if math.prod(info["shape"]) * bits != 8 * nbytes:  # Python ints: a huge shape cannot overflow here
            raise UserError(f"{path}: not a valid safetensors file (tensor {_short(repr(name), 60)} of shape "
                            f"{_short(repr(info['shape']), 60)} does not fit its {nbytes} bytes)")
        tensors[name] = info
    return tensors


def check_weights(directory: str | os.PathLike) -> int:
    """Every `*.safetensors` file of `directory` is safetensors; returns the bytes of tensor data they hold."""
    total = 0
    for path in sorted(Path(directory).glob("*.safetensors")):
        for info in safetensors_header(path).values():
            total += info["data_offsets"][1] - info["data_offsets"][0]
    return total


def positive_int(cfg: dict[str, Any], key: str, path: Path, limit: int, default: int | None = None) -> int | None:
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 1 <= value <= limit:
        raise UserError(f"{path}: {key} must be an integer in 1..{limit}, got {_short(repr(value), 40)}")
    return int(value)


def check_backbone_sizes(directory: str | os.PathLike, weight_bytes: int) -> None:
    """`config.json` must not describe a model far larger than its weights (checked before allocating)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return
    cfg = read_json_file(path)
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    limit = 10**7
    hidden = positive_int(text, "hidden_size", path, limit)
    layers = positive_int(text, "num_hidden_layers", path, limit)
    vocab = positive_int(text, "vocab_size", path, limit)
    inter = positive_int(text, "intermediate_size", path, limit)
    if not (hidden and layers):
        return
    params = (vocab or 0) * hidden + layers * (4 * hidden * hidden + 3 * hidden * (inter or 4 * hidden))
    if 2 * params > 2 * weight_bytes + CONFIG_SLACK_BYTES:  # at least 2 bytes a parameter
        raise UserError(
            f"{path}: describes a model of about {params:,} parameters but its weights hold {weight_bytes:,} bytes; "
            "the config does not match the weights"
        )


def check_model_dir(name_or_path: str | os.PathLike) -> None:
    """All checks that apply to a backbone or causal-LM directory (a hub name passes through)."""
    check_no_remote_code(name_or_path)
    directory = Path(name_or_path)
    if directory.is_dir():
        check_backbone_sizes(directory, check_weights(directory))
