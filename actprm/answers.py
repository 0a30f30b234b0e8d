"""Final answers of math solutions: find them in a text, normalise them, compare them.

Pure Python (no sympy, no signals, no threads), so it runs anywhere: in Ray workers, in
threads, in async code. What it handles, the ProcessBench/MATH way of writing answers:

- where the answer is: the first `\\boxed{...}` / `\\fbox{...}` (braces matched, so
  `\\boxed{\\frac{1}{2}}` is read whole), else the last "the (final) answer is X", else
  (`fallback_last_number`) the last number of the text;
- normalisation: `$`, `\\(`, `\\[`, `\\left`/`\\right`, `\\!`, `\\,`, spaces, a trailing
  period, `\\text{...}`/`\\mbox{...}` units (`5\\text{ cm}` -> 5), degrees (`^\\circ`),
  `\\%`, thousands separators (`1,000`), a leading `x =`, `\\dfrac`/`\\tfrac` -> `\\frac`,
  `\\frac12` -> `\\frac{1}{2}`;
- comparison: numbers by value (integers, decimals, fractions `\\frac{a}{b}` and `a/b`,
  mixed signs: `0.5` = `\\frac{1}{2}` = `1/2`), tuples and lists element by element
  (`3, -5` = `-5, 3` is *not* equal: order matters, as in ProcessBench's references), else
  the normalised strings.

`answers_match(predicted, reference)` is the one entry point the annotators use.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["answers_match", "braced", "extract_answer", "normalize_answer", "to_number"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"(?:final\s+)?answer\s*(?:is|:)\s*:?\s*", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC = re.compile(r"^(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}$")
_SLASH = re.compile(r"^(-?[\d.]+)/(-?[\d.]+)$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def braced(text: str, start: int) -> str | None:
    """The text inside the brace that opens at `start - 1`, up to its matching close (nested braces kept);
    None when it is never closed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None  # unbalanced: no answer


def extract_answer(text: str | None, *, fallback_last_number: bool = False) -> str | None:
    """The final answer written in `text` (see the module docstring), or None."""
    if not text:
        return None
    match = _BOXED.search(text)
    if match is not None:
        return braced(text, match.end())
    matches = list(_ANSWER_IS.finditer(text))  # the last: "Final Answer: The final answer is 18"
    match = matches[-1] if matches else None
    if match is not None:
        rest = text[match.end():]
        # up to the end of the sentence: a period not followed by a digit, a newline, or the end
        end = re.search(r"\.(?!\d)|\n|$", rest)
        value = rest[: end.start()].strip() if end else rest.strip()
        return value or None
    if fallback_last_number:
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    return None


def normalize_answer(answer: str | None) -> str:
    """A canonical string form of an answer (see the module docstring); "" for none."""
    if answer is None:
        return ""
    s = str(answer).strip()
    boxed = _BOXED.search(s)
    if boxed is not None:  # an answer given with its box
        inner = braced(s, boxed.end())
        s = inner if inner is not None else s
    s = s.replace("\\$", "")
    for token in ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$", "\\(", "\\)", "\\[", "\\]"):
        s = s.replace(token, "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "")
    s = s.replace("\\%", "").replace("%", "")
    # units and words in \text{...}: a number followed by text keeps the number
    s = _TEXT.sub(lambda m: m.group(1), s)
    s = s.strip().rstrip(".").strip()
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # x = 5 -> 5
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    number = re.match(r"^(-?[\d.,]*\d)\s*[a-zA-Z][a-zA-Z\s]*$", s)  # 5 cm, 12 dollars
    if number is not None:
        s = number.group(1)
    s = "".join(s.split())
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    return s


def to_number(answer: str) -> Fraction | None:
    """The exact value of a normalised answer that is a number (int, decimal, a/b, \\frac{a}{b}), else None."""
    s = answer
    try:
        frac = _FRAC.match(s)
        if frac is not None:
            sign = -1 if frac.group(1) else 1
            return sign * Fraction(frac.group(2)) / Fraction(frac.group(3))
        slash = _SLASH.match(s)
        if slash is not None:
            return Fraction(slash.group(1)) / Fraction(slash.group(2))
        if re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _split_top(s: str) -> list[str]:
    """Split a tuple/list body on commas outside braces and brackets."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _equal(a: str, b: str) -> bool:
    if a == b:
        return True
    x, y = to_number(a), to_number(b)
    if x is not None and y is not None:
        return x == y
    strip = lambda s: s[1:-1] if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and s[0] + s[-1] in ("()", "[]") else s
    pa, pb = _split_top(strip(a)), _split_top(strip(b))
    if len(pa) > 1 and len(pa) == len(pb) and (a[:1] in "([") == (b[:1] in "(["):
        return all(_equal(p, q) for p, q in zip(pa, pb))
    return False


def answers_match(predicted: str | None, reference: str | None) -> bool:
    """Whether a predicted final answer equals the reference (both raw; normalised here)."""
    a, b = normalize_answer(predicted), normalize_answer(reference)
    if not a or not b:
        return False
    return _equal(a, b)
