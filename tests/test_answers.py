"""The answer checker (actprm.answers): extraction, normalisation, comparison; no signals, so any thread works."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from actprm.answers import answers_match, extract_answer, normalize_answer

# final steps as ProcessBench's generators write them (../shared/data/processbench/math.json and friends)
PROCESSBENCH_FINAL_STEPS = [
    ("the remainder term, which is 9. So, the remainder of 194 (mod 11) is: \\boxed{9}.", "9"),
    ("Therefore, the real roots are:\n\\[\n\\boxed{3, -5}.\n\\]", "3, -5"),
    ("s area \\(\\boxed{0}\\). Final Answer: The final answer is 0. I hope it is correct.", "0"),
    ("Therefore, the solution to the problem is: \\[ \\boxed{-2t + 4} \\]", "-2t + 4"),
    ("the probability is \\(\\boxed{\\frac{1}{2}}\\).", "\\frac{1}{2}"),
    ("So the answer is $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "$18$"),
    ("96 - 30 = 66, so the answer is 66.", "66"),
]


@pytest.mark.parametrize("text,expected", PROCESSBENCH_FINAL_STEPS)
def test_extracts_the_final_answer(text, expected):
    assert extract_answer(text) == expected


def test_extraction_matches_nested_braces_and_finds_nothing_without_an_answer():
    assert extract_answer("\\boxed{\\frac{\\sqrt{3}}{2}} and later \\boxed{7}") == "\\frac{\\sqrt{3}}{2}"
    assert extract_answer("\\boxed{\\frac{1}{2}") is None  # unbalanced
    assert extract_answer("no conclusion here, 3 + 4 = 7") is None
    assert extract_answer("no conclusion here, 3 + 4 = 7", fallback_last_number=True) == "7"
    assert extract_answer(None) is None


@pytest.mark.parametrize("predicted,reference", [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "1/2"), ("\\tfrac{3}{4}", "0.75"), ("$5$", "5"),
    ("5 \\text{ cm}", "5"), ("1,000", "1000"), ("90^\\circ", "90"), ("\\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("x = 3", "3"), ("18.", "18"), ("-\\frac{2}{4}", "-0.5"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("3, -5", "3,-5"), ("10\\%", "10"), ("2.50", "2.5"), ("\\$12", "12"), ("-2t + 4", "-2t+4"),
])
def test_equal_answers_match(predicted, reference):
    assert answers_match(predicted, reference)


@pytest.mark.parametrize("predicted,reference", [
    ("3", "4"), ("\\frac{1}{3}", "0.33"), ("(1, 2)", "(2, 1)"), ("3, -5", "-5, 3"), (None, "3"), ("", "3"),
    ("66", "6"), ("1,000", "1"), ("x+1", "x-1"), ("\\frac{1}{0}", "1"),
])
def test_different_answers_do_not_match(predicted, reference):
    assert not answers_match(predicted, reference)


def test_normalisation_is_idempotent():
    for raw in ["$\\dfrac{1}{2}$", "5\\text{ cm}", "1,234", "\\left(1,2\\right)"]:
        once = normalize_answer(raw)
        assert normalize_answer(once) == once


def test_works_outside_the_main_thread():
    # math-verify's SIGALRM timeouts fail in worker threads (and Ray workers); this checker uses no signals
    pairs = [(p, r) for p, r in [("\\frac{1}{2}", "0.5"), ("3", "4")] * 50]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda pr: answers_match(*pr), pairs))
    assert got == [True, False] * 50
