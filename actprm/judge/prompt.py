"""What the judge is asked, and how its answer is read.

The prompt follows the shape of ProcessBench's critique setup in the project's own words: the
problem, then the solution as indexed paragraphs `<paragraph_i> ... </paragraph_i>` (i from 0),
and a request to reason and put the index of the earliest wrong paragraph in \\boxed{}, or -1
when every paragraph is correct. One user message; no system prompt (some reasoning models are
trained without one).

Escaping (`escape`): user text is inserted verbatim except for the template's delimiters, which
a problem or a step must not be able to write:

- a paragraph tag: every `<paragraph_` / `</paragraph_` (any case, any spacing) is written
  `&lt;paragraph_` / `&lt;/paragraph_`, so the tags in the prompt are only ours;
- a verdict: `\\boxed` is written `\\fbox` (the same box to a reader). A judge that quotes a step,
  or follows an instruction hidden in one, then writes `\\fbox`, which the parser never reads;
- a section header: `[Problem]` / `[Solution]` (any case, any spacing) is written `(Problem)` /
  `(Solution)`.

Delimiters are found in the text's NFKC form with default-ignorable characters (zero-width
spaces and joiners, soft hyphens, bidi marks, variation selectors, ...) removed, so that
`＜paragraph_1＞`, `<para\u200bgraph_1>` or `＼boxed{0}` are caught too; the span of the
original text that makes up a delimiter is replaced by its escaped ASCII form, and the rest of
the text is kept as written (NFKC would change mathematics: `x²` is not `x2`).

Parsing (`parse_verdict`): the answer part of the completion only (reasoning separated first,
see `split_reasoning`) with any echo of the template's own instructions removed (a judge that
repeats the prompt must not answer with its `\\boxed{-1}` example), its last `\\boxed{...}`
brace-matched, whose content must be an ASCII integer (`\\boxed{१}` is not 1) in
[-1, n_steps - 1]. Anything else is a `ParseError` carrying the reason; the caller records it
with the raw text. There is no fallback that guesses a label.

Change `PROMPT_VERSION` whenever the template or the escaping changes: it is part of the answer
cache's key and of every annotation row.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from actprm.answers import braced

PROMPT_VERSION = "critic-v2"  # v2: delimiters found after NFKC, [Problem]/[Solution] escaped

_TEMPLATE = """\
Below is a math problem and a step-by-step solution split into paragraphs, numbered from 0, each \
between <paragraph_i> and </paragraph_i> tags. Check the solution paragraph by paragraph and find \
the earliest paragraph that contains an error: a wrong calculation, a false claim, a step that does \
not follow from what came before, or a misreading of the problem.

[Problem]
{problem}

[Solution]
{paragraphs}

Work through the paragraphs in order. When you are done, end your reply with the index of the \
earliest wrong paragraph in \\boxed{{}}, for example \\boxed{{2}}. If every paragraph is correct, \
end with \\boxed{{-1}}."""

_BOXED = re.compile(r"\\boxed(?![A-Za-z])")  # not \boxedfoo
# the template's delimiters, as found in a text's NFKC form: a paragraph tag, a box, a section header
# (and a reasoning model's think tags: a step quoting `</think>` would cut the judge's answer where it is read)
_DELIMITER = re.compile(r"(?P<tag><\s*/?\s*(?:paragraph_|think\s*>))|(?P<box>\\boxed(?![A-Za-z]))"
                        r"|(?P<header>\[\s*(?:problem|solution)\s*\])", re.IGNORECASE)
_MAYBE = re.compile(r"<\s*/?\s*(?:paragraph_|think)|\\boxed|\[\s*(?:problem|solution)\s*\]",
                    re.IGNORECASE)  # looser
# default-ignorable code points (invisible: a delimiter split by one still reads as the delimiter)
_IGNORABLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
                        "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\U0001bca0-\U0001bca3"
                        "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def _escaped(kind: str, found: str) -> str:
    """The escaped ASCII form of a delimiter as found (NFKC)."""
    if kind == "tag":
        return "&lt;" + found[1:]
    if kind == "box":
        return "\\fbox"
    return "(" + found.strip("[] \t\r\n").strip() + ")"


def _normal_view(text: str) -> tuple[str, list[int]]:
    """`text` in NFKC (char by char) without ignorable characters, and each char's index in `text`."""
    chars: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if _IGNORABLE.match(ch):
            continue
        norm = unicodedata.normalize("NFKC", ch) if not ch.isascii() else ch
        chars.append(norm)
        origin.extend([i] * len(norm))
    return "".join(chars), origin


def escape(text: str) -> str:
    """User text as it goes into the prompt: none of the template's delimiters (see the module docstring)."""
    if text.isascii():
        return _DELIMITER.sub(lambda m: _escaped(m.lastgroup or "", m.group()), text)
    if not _MAYBE.search(unicodedata.normalize("NFKD", _IGNORABLE.sub("", text))):
        return text  # fast: NFKD keeps every ASCII character NFKC would give, so no delimiter can hide here
    return _escape_view(text)


def _escape_view(text: str) -> str:
    """`escape` of any text through its normal view (the slow path)."""
    view, origin = _normal_view(text)
    out, last = [], 0
    for m in _DELIMITER.finditer(view):
        start, end = origin[m.start()], origin[m.end() - 1] + 1
        if start < last:  # inside a character already replaced
            continue
        out.append(text[last:start])
        out.append(_escaped(m.lastgroup or "", m.group()))
        last = end
    out.append(text[last:])
    return "".join(out)


def render_prompt(problem: str, steps: Sequence[str]) -> str:
    """The user message for one trajectory."""
    paragraphs = "\n\n".join(f"<paragraph_{i}>\n{escape(step)}\n</paragraph_{i}>" for i, step in enumerate(steps))
    return _TEMPLATE.format(problem=escape(problem), paragraphs=paragraphs)


def build_messages(problem: str, steps: Sequence[str]) -> list[dict[str, str]]:
    """Chat-completions messages for one trajectory."""
    return [{"role": "user", "content": render_prompt(problem, steps)}]


# ---------------------------------------------------------------- the answer


class ParseError(ValueError):
    """The completion has no usable verdict; str(exc) says why (recorded as `parse: <why>`)."""


_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)


def split_reasoning(content: str | None, reasoning: str | None = None) -> tuple[str, str]:
    """(reasoning, answer) of a chat completion.

    Servers that separate reasoning (vLLM's and SGLang's reasoning parsers, DeepSeek's API) put
    it in a field of its own (`reasoning_content` or `reasoning`), passed here as `reasoning`;
    otherwise a reasoning model writes it into the content inside <think>...</think>. The answer
    is what follows the last </think>; content with an opening <think> that is never closed was
    cut off while reasoning and has no answer (empty string).
    """
    content = content or ""
    closes = list(_THINK_CLOSE.finditer(content))
    if closes:
        cut = closes[-1]
        thought = content[:cut.start()]
        thought = _THINK_OPEN.sub("", thought, count=1)
        answer = content[cut.end():]
    elif _THINK_OPEN.search(content):
        thought, answer = _THINK_OPEN.sub("", content, count=1), ""
    else:
        thought, answer = "", content
    if reasoning:
        thought = reasoning + ("\n" + thought if thought else "")
    return thought.strip(), answer.strip()


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, braces matched; None if there is none.

    Nested braces are kept (`\\boxed{\\frac{1}{2}}` -> `\\frac{1}{2}`). A last `\\boxed` without
    a brace or with unbalanced braces raises ParseError: an earlier box is never used instead.
    """
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        raise ParseError("the last \\boxed has no {...}")
    inner = braced(text, i + 1)
    if inner is None:
        raise ParseError("the last \\boxed{ is never closed")
    return inner


_INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would read any script's digits


def _phrase(text: str) -> re.Pattern[str]:
    """A regex for `text` with any run of whitespace matching any run of whitespace."""
    return re.compile(r"\s+".join(re.escape(word) for word in text.split()), re.IGNORECASE)


# the template's own boxes, in their sentences: an answer that repeats them has not answered with them
_ECHOES = [_phrase("in \\boxed{}, for example \\boxed{2}."), _phrase("If every paragraph is correct, end with \\boxed{-1}.")]


def without_echo(answer: str) -> str:
    """`answer` without the template's instruction sentences that hold its example boxes."""
    for echo in _ECHOES:
        answer = echo.sub(" ", answer)
    return answer


def parse_verdict(answer: str, n_steps: int) -> int:
    """The judge's label from the answer part of its completion: an int in [-1, n_steps - 1]."""
    boxed = last_boxed(without_echo(answer))
    if boxed is None:
        raise ParseError("no \\boxed{} in the answer")
    value = boxed.strip()
    if not _INTEGER.fullmatch(value):
        raise ParseError(f"\\boxed{{{_clip(value)}}} is not an integer")
    label = int(value)
    if not -1 <= label < n_steps:
        raise ParseError(f"\\boxed{{{label}}} is outside -1..{n_steps - 1}")
    return label


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
