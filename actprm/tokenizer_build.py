"""Build the project's byte-level BPE tokenizer from local text.

Usage::

    python -m actprm.tokenizer_build [--output actprm/assets/tokenizer] \\
        [--vocab-size 4096] [--seed 0] [--data ../shared/data/processbench]

Recipe:

* training text: the ``problem`` and every ``steps`` entry of the ProcessBench
  JSON files (``<data>/*.json``, read in sorted order) plus a few thousand
  lines of arithmetic generated deterministically from ``--seed``;
* pre-tokenisation: ``Digits(individual_digits=True)`` then
  ``ByteLevel(add_prefix_space=False)``, so every digit is its own pre-token and
  no vocabulary entry contains more than one digit; no normaliser, byte-level
  decoder, so ``decode(encode(text)) == text`` for any unicode text;
* special tokens (ids 0..4): see :mod:`actprm.tokens`;
* saved with ``PreTrainedTokenizerFast.save_pretrained``; the ChatML chat
  template is kept inside ``tokenizer_config.json`` (not a separate
  ``chat_template.jinja``) and the config is rewritten to the spellings that
  transformers 4.x also loads (see ``_make_config_portable``).

Determinism: the same inputs and seed give a byte-identical ``tokenizer.json``
(checked with tokenizers 0.23 under RAYON_NUM_THREADS=1 and 2: the BPE
trainer's result does not depend on the thread count, so no thread setting is
forced here).  ``tests/test_tokenizer.py`` rebuilds and compares.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import time
from collections.abc import Iterator, Sequence

from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from actprm.tokens import (
    BOS_TOKEN,
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    STEP_SEPARATOR,
    STEP_SEPARATOR_CONFIG_KEY,
)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "actprm" / "assets" / "tokenizer"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "processbench"
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_SEED = 0
DEFAULT_ARITHMETIC_LINES = 4000
MODEL_MAX_LENGTH = 32768

#: ChatML (Qwen-style) template.  ``add_generation_prompt`` opens an assistant turn.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '" + IM_START + "' + message['role'] + '\\n' + message['content'] + '" + IM_END + "' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '" + IM_START + "assistant\\n' }}"
    "{%- endif %}"
)


# --------------------------------------------------------------------------- text


def iter_processbench_text(data_dir: pathlib.Path) -> Iterator[str]:
    """Yield every problem and step string of ``data_dir/*.json`` (sorted files)."""
    files = sorted(pathlib.Path(data_dir).glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no ProcessBench *.json files in {data_dir}")
    for path in files:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
        for rec in records:
            problem = rec.get("problem")
            if isinstance(problem, str) and problem:
                yield problem
            for step in rec.get("steps") or ():
                if isinstance(step, str) and step:
                    yield step


def arithmetic_lines(n: int = DEFAULT_ARITHMETIC_LINES, seed: int = DEFAULT_SEED) -> list[str]:
    """Deterministic arithmetic text (operators, '=', spaces and many digits)."""
    rng = random.Random(seed)

    def num(hi: int = 999) -> int:
        # Mostly small numbers, sometimes large ones.
        return rng.randint(0, hi if rng.random() < 0.8 else 99999)

    lines: list[str] = []
    for i in range(n):
        kind = rng.randrange(9)
        a, b = num(), num()
        if kind == 0:
            line = f"{a} + {b} = {a + b}"
        elif kind == 1:
            line = f"{a} - {b} = {a - b}"
        elif kind == 2:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            line = f"{a} * {b} = {a * b}"
        elif kind == 3:
            b = rng.randint(1, 50)
            q = rng.randint(0, 200)
            line = f"{b * q} / {b} = {q}"
        elif kind == 4:
            a, b, m = rng.randint(0, 50), rng.randint(0, 50), rng.randint(2, 13)
            line = f"({a} * {b}) mod {m} = {(a * b) % m}"
        elif kind == 5:
            line = f"Step {i % 12 + 1}: x = {a} - {b} = {a - b}"
        elif kind == 6:
            c = rng.randint(1, 9)
            line = f"Step {i % 12 + 1}: y = {c} * ({a} + {b}) = {c} * {a + b} = {c * (a + b)}"
        elif kind == 7:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            line = f"\\({a} \\times {b} = {a * b}\\)"
        else:
            a = rng.randint(0, 99)
            line = f"{a}^2 = {a * a}, so the answer is \\boxed{{{a * a}}}."
        lines.append(line)
    return lines


# -------------------------------------------------------------------------- build


def _train(texts: Sequence[str] | Iterator[str], vocab_size: int):
    """Train the raw ``tokenizers.Tokenizer``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def build_tokenizer(
    output: str | os.PathLike = DEFAULT_OUTPUT,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = DEFAULT_SEED,
    data: str | os.PathLike = DEFAULT_DATA,
    arithmetic: int = DEFAULT_ARITHMETIC_LINES,
) -> pathlib.Path:
    """Train and save the tokenizer into ``output``; returns the directory."""
    texts = list(iter_processbench_text(pathlib.Path(data)))
    texts.extend(arithmetic_lines(arithmetic, seed))
    raw = _train(texts, vocab_size)

    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[IM_START, IM_END, STEP_SEPARATOR],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
        **{STEP_SEPARATOR_CONFIG_KEY: STEP_SEPARATOR},
    )
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    # save_jinja_files=False keeps the chat template inside tokenizer_config.json.
    hf.save_pretrained(str(out), save_jinja_files=False)
    _make_config_portable(out / "tokenizer_config.json")
    return out


def _make_config_portable(config_path: pathlib.Path) -> None:
    """Rewrite the two v5-only spellings in ``tokenizer_config.json``.

    transformers 5.x writes ``"tokenizer_class": "TokenizersBackend"`` and
    ``"extra_special_tokens": [...]`` (a list); transformers 4.x cannot resolve
    that class and expects ``extra_special_tokens`` to be a dict.  The 4.x
    spellings (``PreTrainedTokenizerFast``, ``additional_special_tokens``) load
    identically under 5.x, so they are what we commit.
    """
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = config.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        config["additional_special_tokens"] = extra
    elif extra is not None:
        config["extra_special_tokens"] = extra
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actprm.tokenizer_build", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="output directory (default: %(default)s)")
    p.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for the generated arithmetic text")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory of ProcessBench *.json (default: %(default)s)")
    p.add_argument("--arithmetic-lines", type=int, default=DEFAULT_ARITHMETIC_LINES)
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    out = build_tokenizer(args.output, args.vocab_size, args.seed, args.data, args.arithmetic_lines)
    dt = time.perf_counter() - t0
    sizes = ", ".join(f"{f.name}={f.stat().st_size}B" for f in sorted(out.iterdir()) if f.is_file())
    print(f"tokenizer saved to {out} in {dt:.1f}s ({sizes})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
