"""Token constants and the loader for the project's tokenizer.

The committed tokenizer lives in ``actprm/assets/tokenizer`` and is produced by
``python -m actprm.tokenizer_build`` (see that module for the recipe).  It is a
byte-level BPE tokenizer (4096 ids by default) whose vocabulary never holds a
token with more than one digit, with these special tokens, each a single id:

* ``EOS_TOKEN`` / ``BOS_TOKEN`` (``<|endoftext|>``), ``PAD_TOKEN`` (``<|pad|>``);
* ``IM_START`` / ``IM_END`` (``<|im_start|>``, ``<|im_end|>``) for the ChatML
  chat template stored in ``tokenizer_config.json``;
* ``STEP_SEPARATOR`` (``<extra_0>``), the PRM step tag placed after every
  reasoning step; the reward is read at its positions.

The separator is recorded in ``tokenizer_config.json`` under the key
``step_separator_token`` (``STEP_SEPARATOR_CONFIG_KEY``).  transformers 5.x
exposes such ``*_token`` keys as named special tokens, i.e. as
``tokenizer.step_separator_token`` and ``tokenizer.step_separator_token_id``;
code that must also run with other (hub) tokenizers should use
:func:`step_separator_id`, which works for any tokenizer that has the
separator as a single token.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
from typing import Any

from transformers import AutoTokenizer, TokenizersBackend
from transformers.utils import cached_file

from actprm.errors import UserError
from actprm.io.model_files import check_no_remote_code

STEP_SEPARATOR = "<extra_0>"
EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = EOS_TOKEN
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

#: Key under which the separator is recorded in ``tokenizer_config.json``.
STEP_SEPARATOR_CONFIG_KEY = "step_separator_token"

#: All special tokens in id order (ids 0..4 in the committed tokenizer).
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END, STEP_SEPARATOR)

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "IM_END",
    "IM_START",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "STEP_SEPARATOR",
    "STEP_SEPARATOR_CONFIG_KEY",
    "default_tokenizer_path",
    "load_tokenizer",
    "step_separator_id",
    "tokenizer_as_is",
]


def default_tokenizer_path() -> pathlib.Path:
    """Directory of the tokenizer committed with the package."""
    return pathlib.Path(str(importlib.resources.files("actprm") / "assets" / "tokenizer"))


def load_tokenizer(name_or_path: str | os.PathLike | None = None, **kwargs: Any):
    """Load a tokenizer: a directory's (or hub repository's) ``tokenizer.json`` exactly as it is.

    With no argument the committed project tokenizer is loaded (offline).  A hub name or
    another local directory may be given for real models; extra keyword arguments go to
    ``from_pretrained``.  Where there is a ``tokenizer.json`` it is loaded as it is
    (:func:`tokenizer_as_is`); only a directory without one goes through ``AutoTokenizer``.
    """
    path = name_or_path or default_tokenizer_path()
    check_no_remote_code(path)
    kwargs.pop("trust_remote_code", None)  # never True: a model's own code does not run
    try:
        if _has_tokenizer_json(path, kwargs):
            return tokenizer_as_is(path, **kwargs)
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except RecursionError:  # a tokenizer.json nested thousands deep
        raise UserError(f"{path}: the tokenizer files nest too deep to be read") from None


def tokenizer_as_is(path: str | os.PathLike, **kwargs: Any):
    """The tokenizer of ``path``'s ``tokenizer.json`` as it is, with ``tokenizer_config.json``'s settings.

    Not ``AutoTokenizer``: transformers 5 picks the class of the config's ``model_type``, and
    Qwen2Tokenizer rebuilds the tokenizer from vocab and merges with its own split regex and
    NFC normaliser ("\\n\\n" one token where the checkpoint's tokenizer.json gives two).
    ``TokenizersBackend`` runs no code from the directory (auto_map is not read).
    """
    return TokenizersBackend.from_pretrained(path, **kwargs)


def _has_tokenizer_json(path: str | os.PathLike, kwargs: dict[str, Any]) -> bool:
    if pathlib.Path(path).is_dir():
        return (pathlib.Path(path) / "tokenizer.json").is_file()
    # a hub name: its tokenizer.json is fetched anyway when it has one
    hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs}
    try:
        return cached_file(str(path), "tokenizer.json", _raise_exceptions_for_missing_entries=False, **hub) is not None
    except OSError:
        return False


def step_separator_id(tokenizer: Any, separator: str = STEP_SEPARATOR) -> int:
    """Id of the PRM step separator; raises if it is not a single known token."""
    ids = tokenizer.encode(separator, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"{separator!r} is not a single token for this tokenizer (got ids {ids})")
    return int(ids[0])
