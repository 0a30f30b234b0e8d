"""Tests for the committed project tokenizer (actprm/assets/tokenizer)."""

from __future__ import annotations

import json

import pytest

from actprm import tokens
from actprm.tokens import (
    EOS_TOKEN,
    IM_END,
    IM_START,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    STEP_SEPARATOR,
    default_tokenizer_path,
    load_tokenizer,
    step_separator_id,
)

ROUND_TRIP_TEXTS = [
    "",
    "Step 1: x = 45 - 17 = 28",
    "  leading and trailing spaces \t tabs\nnew lines\r\n",
    "The answer is \\(\\boxed{\\frac{3}{4}}\\) and $\\sqrt{2} \\approx 1.41421$.",
    "\\begin{align*} \\int_0^1 x^2 \\, dx &= \\frac{1}{3} \\end{align*}",
    "Unicode: αβγ ≤ ∞, 日本語のテキスト, emoji 🙂👍🏽, x² ½ ٣٤ café naïve",
    "1234567890" * 3,
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _byte_decoder() -> dict[str, int]:
    # Inverse of the GPT-2 byte -> printable-unicode table used by ByteLevel.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def test_default_path_is_committed_directory():
    path = default_tokenizer_path()
    assert path.is_dir()
    assert (path / "tokenizer.json").is_file()
    assert (path / "tokenizer_config.json").is_file()
    # Small enough to commit.
    assert (path / "tokenizer.json").stat().st_size < 1_000_000


def test_vocab_size_and_special_ids(tok):
    assert len(tok) == 4096
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(t) == i
        assert tok.encode(t, add_special_tokens=False) == [i]
    assert tok.eos_token == EOS_TOKEN and tok.bos_token == EOS_TOKEN
    assert tok.pad_token == PAD_TOKEN
    assert tok.pad_token_id == 1 and tok.eos_token_id == 0
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)


def test_no_vocab_token_has_two_digits(tok):
    byte_decoder = _byte_decoder()
    specials = set(SPECIAL_TOKENS)
    offenders = []
    for piece in tok.get_vocab():
        if piece in specials:
            continue
        raw = bytes(byte_decoder[c] for c in piece)
        text = raw.decode("utf-8", errors="ignore")
        if sum(ch.isdigit() for ch in text) >= 2 or sum(ch.isdigit() for ch in piece) >= 2:
            offenders.append(piece)
    assert offenders == []


def test_digits_are_split_individually(tok):
    assert len(tok.encode("12345", add_special_tokens=False)) == 5
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]
    ids = tok.encode("x = 2024 + 17", add_special_tokens=False)
    assert sum(tok.decode([i]).isdigit() for i in ids) == 6


def test_no_special_tokens_added_by_default(tok):
    assert tok.encode("hello world") == tok.encode("hello world", add_special_tokens=False)


@pytest.mark.parametrize("special", SPECIAL_TOKENS)
def test_special_token_not_split_inside_text(tok, special):
    sid = tok.convert_tokens_to_ids(special)
    ids = tok.encode(f"a{special}b", add_special_tokens=False)
    assert ids.count(sid) == 1
    assert tok.decode(ids) == f"a{special}b"


def test_step_separator(tok):
    sep_id = step_separator_id(tok)
    assert sep_id == tok.convert_tokens_to_ids(STEP_SEPARATOR) == 4
    text = f"Step 1: 2 + 2 = 4{STEP_SEPARATOR}Step 2: 4 * 3 = 12{STEP_SEPARATOR}"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids.count(sep_id) == 2
    assert ids[-1] == sep_id
    # The separator is recorded in the config under a documented key.
    cfg = json.loads((default_tokenizer_path() / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg[tokens.STEP_SEPARATOR_CONFIG_KEY] == STEP_SEPARATOR


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.unk_token_id is None or tok.unk_token_id not in ids


def test_chat_template(tok):
    messages = [
        {"role": "system", "content": "You are a grader."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": f"2 + 2 = 4{STEP_SEPARATOR}"},
    ]
    rendered = tok.apply_chat_template(messages, tokenize=False)
    assert rendered == (
        f"{IM_START}system\nYou are a grader.{IM_END}\n"
        f"{IM_START}user\nWhat is 2 + 2?{IM_END}\n"
        f"{IM_START}assistant\n2 + 2 = 4{STEP_SEPARATOR}{IM_END}\n"
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith(f"{IM_START}assistant\n")
    ids = tok.encode(rendered, add_special_tokens=False)
    assert ids.count(tok.convert_tokens_to_ids(IM_START)) == 3
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 3
    assert ids.count(tok.convert_tokens_to_ids(STEP_SEPARATOR)) == 1


def test_explicit_path_loads_the_same(tok):
    path = default_tokenizer_path()
    for other in (load_tokenizer(path), load_tokenizer(str(path))):
        assert other.get_vocab() == tok.get_vocab()
        for text in ROUND_TRIP_TEXTS + [f"a{STEP_SEPARATOR}b"]:
            assert other.encode(text) == tok.encode(text)
        assert other.chat_template == tok.chat_template


def test_arithmetic_text_is_seeded():
    from actprm.tokenizer_build import arithmetic_lines

    a = arithmetic_lines(200, seed=0)
    assert a == arithmetic_lines(200, seed=0)
    assert a != arithmetic_lines(200, seed=1)
    assert all("=" in line for line in a)


def test_rebuild_reproduces_committed_tokenizer(tmp_path):
    from actprm import tokenizer_build

    if not tokenizer_build.DEFAULT_DATA.is_dir():
        pytest.skip(f"ProcessBench data not available at {tokenizer_build.DEFAULT_DATA}")
    out = tokenizer_build.build_tokenizer(tmp_path / "tok")
    committed = default_tokenizer_path()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (committed / name).read_bytes(), name
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in committed.iterdir())


def test_a_saved_prm_directory_tokenizes_as_the_tokenizer_it_was_made_with(tmp_path):
    """A PRM directory's config.json says model_type qwen2: its tokenizer.json is still loaded as it is
    (not as transformers' Qwen2Tokenizer, which makes a blank line one token where ours has two)."""
    from actprm.model import init_model

    model, tok = init_model("tiny", n_heads=1)
    model.save_pretrained(tmp_path / "prm")
    text = "12 + 30 = 42.\n\nSo the answer is 42.\n"
    again = load_tokenizer(tmp_path / "prm")
    assert again.encode(text) == tok.encode(text) == load_tokenizer().encode(text)
    assert again.tokenize("a.\n\nb").count("Ċ") == 2
