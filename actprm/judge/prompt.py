"""What the judge is asked, and how its answer is read.

The prompt follows the shape of ProcessBench's critique setup in the project's own words: the
problem, then the solution as indexed paragraphs `<paragraph_i> ... </paragraph_i>` (i from 0),
and a request to reason and put the index of the earliest wrong paragraph in \\boxed{}, or -1
when every paragraph is correct. One user message; no system prompt (some reasoning models are
trained without one).

Escaping (`escape`): user text is inserted verbatim except for two things a step must not be
able to do:

- close or open a paragraph: every `<paragraph_` / `</paragraph_` (any case, any spacing) is
  written `&lt;paragraph_` / `&lt;/paragraph_`, so the tags in the prompt are only ours;
- plant a verdict: `\\boxed` is written `\\fbox` (the same box to a reader). A judge that quotes
  a step, or follows an instruction hidden in one, then writes `\\fbox`, which the parser never
  reads: only the judge's own last `\\boxed{}` is its verdict.

Parsing (`parse_verdict`): the answer part of the completion only (reasoning separated first,
see `split_reasoning`), its last `\\boxed{...}` brace-matched, whose content must be an integer in
[-1, n_steps - 1]. Anything else is a `ParseError` carrying the reason; the caller records it
with the raw text. There is no fallback that guesses a label.

Change `PROMPT_VERSION` whenever the template or the escaping changes: it is part of the answer
cache's key and of every annotation row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from actprm.answers import braced

PROMPT_VERSION = "critic-v1"

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

_TAG = re.compile(r"<(\s*/?\s*paragraph_)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed(?![A-Za-z])")  # not \boxedfoo


def escape(text: str) -> str:
    """User text as it goes into the prompt: no paragraph tags of its own, no `\\boxed`."""
    return _BOXED.sub(r"\\fbox", _TAG.sub(r"&lt;\1", text))


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


_INTEGER = re.compile(r"[+-]?\d+")


def parse_verdict(answer: str, n_steps: int) -> int:
    """The judge's label from the answer part of its completion: an int in [-1, n_steps - 1]."""
    boxed = last_boxed(answer)
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
