"""Outcome labels: did the final answer match the reference? The cheapest label there is.

The checker is `actprm.answers` (the one the rollout annotator uses): the final answer is read from the
last step (a `\\boxed{}`, else the last "the answer is X", else its last number) and compared with
`reference_answer` (numbers by value, else normalised text).

`OutcomeAnnotator` is an annotator (actprm.judge.base) that answers from this checker: no judge call,
no tokens, no cost. An outcome says only whether *some* step is wrong, so the annotation row's
`first_error_step` is -1 for a right answer and the last step for a wrong one (the step that states
the answer), with `judge` "outcome": only the implicit objectives (actprm.implicit), which read
nothing but right/wrong, should train on it (the loop refuses `labels: outcome` for the ensemble).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actprm.answers import answers_match, extract_answer
from actprm.judge.base import Annotator

OUTCOME_JUDGE = "outcome"
OUTCOME_VERSION = "outcome-v1"


def final_answer(steps: list[str]) -> str | None:
    """The final answer the last step states (actprm.answers.extract_answer); None for no steps."""
    return extract_answer(steps[-1], fallback_last_number=True) if steps else None


def outcome_label(row: dict[str, Any]) -> bool | None:
    """Whether the row's final answer is right: checked against `reference_answer` when the row has
    one, else its `final_answer_correct` column; None when neither is known."""
    ref = row.get("reference_answer")
    if ref is not None:
        return answers_match(final_answer(list(row["steps"])), str(ref))
    known = row.get("final_answer_correct")
    return None if known is None else bool(known)


class OutcomeAnnotator(Annotator):
    """Labels from the outcome checker: -1 for a right final answer, the last step for a wrong one."""

    judge = OUTCOME_JUDGE
    prompt_version = OUTCOME_VERSION

    async def annotate_async(self, rows: list[dict[str, Any]],
                             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            ok = outcome_label(row)
            if ok is None:
                ann = self.failed(row["id"], "no reference: the row has neither reference_answer nor "
                                  "final_answer_correct", attempts=0)
            else:
                ann = self.labelled(row["id"], -1 if ok else len(row["steps"]) - 1, attempts=0)
            out.append(ann)
            if on_row is not None:
                on_row(ann)
        return out
