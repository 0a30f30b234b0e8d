"""The annotator interface: trajectories in, one annotation row each out.

Every backend (`verifier`, the OpenAI-compatible judge `openai`, `rollout`) is an
`Annotator`. The contract, which the jobs and the Ray recipes rely on:

- in: a batch of canonical trajectory dicts (`id`, `problem`, `steps`, `first_error_step`, ...;
  keys a backend does not use are ignored);
- out: exactly one row of the annotations table (data_schemas/annotations.yaml) per input
  row, with the same `id`, in input order (callers still join by id);
- a problem with one row (no ground truth, a refusal, an unparseable answer, a request that
  kept failing) never raises: the row comes back failed, `first_error_step=None` and an
  `error` of the form `<kind>: <detail>`. Only a setting that would fail every row (the
  endpoint refuses the key, the model or the URL) raises, as a UserError, stopping the job.

Rows are built with `labelled_row` / `failed_row` so that every backend fills every column.
"""

from __future__ import annotations

import abc
import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any


def _row(rid: str, label: dict[str, Any], *, judge: str, prompt_version: str, prompt_tokens: int = 0,
         completion_tokens: int = 0, cost_usd: float = 0.0, attempts: int = 1, cached: int = 0,
         latency_s: float = 0.0, raw_output: str | None = None, step_values: Sequence[float | None] | None = None,
         step_progress: Sequence[float | None] | None = None,
         step_labels: Sequence[float | None] | None = None) -> dict[str, Any]:
    """An annotations row: `label` (first_error_step, votes, agreement, error), the accounting columns and
    the per-step columns of rollout labels (null for other backends)."""
    return {"id": rid, **label, "judge": judge, "prompt_version": prompt_version,
            "prompt_tokens": int(prompt_tokens), "completion_tokens": int(completion_tokens),
            "cost_usd": float(cost_usd), "attempts": int(attempts), "cached": int(cached),
            "latency_s": float(latency_s), "raw_output": raw_output,
            "step_values": None if step_values is None else list(step_values),
            "step_progress": None if step_progress is None else list(step_progress),
            "step_labels": None if step_labels is None else list(step_labels)}


def labelled_row(rid: str, first_error_step: int, *, votes: Sequence[int] | None = None,
                 agreement: float | None = None, **fields: Any) -> dict[str, Any]:
    """An annotation row with a label. Without `votes`, the label is the single vote (agreement 1.0).

    `fields`: judge and prompt_version (required), prompt_tokens, completion_tokens, cost_usd,
    attempts, cached, latency_s, raw_output; step_values, step_progress, step_labels (rollouts).
    """
    votes = [int(first_error_step)] if votes is None else [int(v) for v in votes]
    if agreement is None:
        agreement = votes.count(int(first_error_step)) / len(votes) if votes else 1.0
    return _row(rid, {"first_error_step": int(first_error_step), "votes": votes, "agreement": float(agreement),
                      "error": None}, **fields)


def failed_row(rid: str, error: str, **fields: Any) -> dict[str, Any]:
    """An annotation row without a label; `error` is `<kind>: <detail>` (e.g. `refusal: ...`); `fields` as for
    `labelled_row`."""
    return _row(rid, {"first_error_step": None, "votes": [], "agreement": None, "error": error}, **fields)


def error_kind(error: str) -> str:
    """The part of an `error` (or errors-table `reason`) before the colon: what summaries count."""
    return error.split(":", 1)[0]


def _pessimism_key(label: int) -> float:
    # earlier error = more pessimistic; -1 (no error) counts as later than every step
    return float("inf") if label == -1 else float(label)


def majority(votes: Sequence[int]) -> tuple[int, float]:
    """The most common label among `votes` and its share of the votes: (label, agreement).

    Tie rule: among the labels with the highest count, the earliest step index wins, with
    -1 ("no error") counting as later than every step. That is the most pessimistic label:
    a trajectory two samples call correct and two call wrong at step 3 is labelled 3, and
    between steps 2 and 5 step 2 wins. Deterministic, independent of the order of the votes.

    `votes` must not be empty (a row with no vote is a failed row, not a label).
    """
    if not votes:
        raise ValueError("majority() needs at least one vote")
    counts = Counter(int(v) for v in votes)
    top = max(counts.values())
    label = min((v for v, n in counts.items() if n == top), key=_pessimism_key)
    return label, top / len(votes)


class Annotator(abc.ABC):
    """A source of earliest-error labels. Subclasses set `judge` and `prompt_version` and
    implement `annotate_async`; see the module docstring for the contract.

    `judge` is written to the annotations' `judge` column (who labelled, with whatever sets
    its answers) and `prompt_version` to `prompt_version`.
    """

    judge: str
    prompt_version: str

    @abc.abstractmethod
    async def annotate_async(self, rows: list[dict[str, Any]],
                             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """One annotation row per input row, same ids, input order. Never raises for a per-row problem.

        `on_row(annotation)` is called as each row finishes (progress bars); rows may finish in
        any order.
        """

    async def aclose(self) -> None:
        """Release what the annotator holds for the running event loop (connections); no-op by default."""

    def annotate(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Synchronous `annotate_async` in a fresh event loop of its own (closed after).

        Code that already runs inside an event loop (async Ray actors, Jupyter, an async
        server) must `await annotator.annotate_async(rows)` instead: asyncio cannot start a
        second loop in a thread that runs one, and this method says so with a RuntimeError.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            async def run() -> list[dict[str, Any]]:
                try:
                    return await self.annotate_async(list(rows))
                finally:
                    await self.aclose()
            return asyncio.run(run())
        raise RuntimeError(
            f"{type(self).__name__}.annotate() was called inside a running event loop; "
            "use `await annotator.annotate_async(rows)` there")

    def labelled(self, rid: str, first_error_step: int, **fields: Any) -> dict[str, Any]:
        """`labelled_row` with this annotator's judge and prompt_version."""
        return labelled_row(rid, first_error_step, judge=self.judge, prompt_version=self.prompt_version, **fields)

    def failed(self, rid: str, error: str, **fields: Any) -> dict[str, Any]:
        """`failed_row` with this annotator's judge and prompt_version."""
        return failed_row(rid, error, judge=self.judge, prompt_version=self.prompt_version, **fields)


def check_contract(rows: list[dict[str, Any]], out: list[dict[str, Any]], annotator: Annotator) -> None:
    """One annotation per input row with the same ids: a backend that breaks this is a bug."""
    if [r["id"] for r in rows] != [r["id"] for r in out]:
        raise RuntimeError(f"annotator {annotator.judge!r} returned {len(out)} rows for {len(rows)} "
                           "or changed their ids/order")
