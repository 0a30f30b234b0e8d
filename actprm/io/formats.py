"""Input formats: how a record of each format users have maps onto the trajectories table.

| format        | columns it needs              | mapping                                                      |
|---------------|-------------------------------|--------------------------------------------------------------|
| canonical     | problem, steps                | as is (see data_schemas/trajectories.yaml)                   |
| processbench  | problem, steps, label         | label → first_error_step; source = processbench/<file stem>  |
| activeprm     | question, steps               | question → problem; first 0 in hard_labels → first_error_step |
| trl           | prompt, completions           | prompt → problem; completions → steps; first False in labels |
| rollout       | problem, response             | response split into steps on a separator (default blank line)|

Rows without an `id` get a content hash (`content_id`), stable across runs and machines.
Fields with no column in the trajectories table are kept as JSON in `meta`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from actprm.schemas import RowError, load_schema

FORMATS = ("canonical", "processbench", "activeprm", "trl", "rollout")

REQUIRED: dict[str, tuple[str, ...]] = {
    "canonical": ("problem", "steps"),
    "processbench": ("problem", "steps", "label"),
    "activeprm": ("question", "steps"),
    "trl": ("prompt", "completions"),
    "rollout": ("problem", "response"),
}


def detect_format(columns: list[str] | set[str]) -> str | None:
    """The format whose shape these columns have, or None."""
    cols = set(columns)
    if {"question", "steps"} <= cols:
        return "activeprm"
    if {"prompt", "completions"} <= cols:
        return "trl"
    if {"problem", "steps", "label"} <= cols and "first_error_step" not in cols:
        return "processbench"
    if {"problem", "steps"} <= cols:
        return "canonical"
    if {"problem", "response"} <= cols:
        return "rollout"
    return None


def missing_columns(fmt: str, columns: list[str] | set[str]) -> list[str]:
    return [c for c in REQUIRED[fmt] if c not in set(columns)]


def content_id(problem: Any, steps: Any) -> str | None:
    """`h-` + 24 hex digits of SHA-256 over the problem and steps; None if they are unusable."""
    if not isinstance(problem, str) or not isinstance(steps, (list, tuple)):
        return None
    if not all(isinstance(s, str) for s in steps):
        return None
    payload = json.dumps([problem, list(steps)], ensure_ascii=False, separators=(",", ":"))
    return "h-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def first_index(labels: Any, bad: Callable[[Any], bool], n_steps: int | None) -> int | None:
    """Index of the first label that marks an error; -1 if every step has a good label; None if unknown."""
    if labels is None:
        return None
    if not isinstance(labels, (list, tuple)):
        raise RowError("wrong type", f"step labels must be a list, got {type(labels).__name__}")
    for i, value in enumerate(labels):
        if value is None:
            raise RowError("wrong type", f"step label {i} is null")
        if bad(value):
            return i
    # all good: only a full set of labels tells that every step is correct
    return -1 if n_steps is not None and len(labels) >= n_steps else None


@dataclass(frozen=True)
class MapContext:
    """What a mapping needs besides the record."""

    file_stem: str
    step_separator: str = "\n\n"


_CANONICAL = tuple(load_schema("trajectories").names)


def _meta(record: dict[str, Any], used: set[str]) -> str | None:
    extra = {k: v for k, v in record.items() if k not in used}
    return json.dumps(extra, ensure_ascii=False, default=repr, sort_keys=True) if extra else None


def to_trajectory(record: dict[str, Any], fmt: str, ctx: MapContext) -> dict[str, Any]:
    """Map one record of format `fmt` onto the trajectories columns (not yet validated)."""
    if fmt == "canonical":
        row = {k: record.get(k) for k in _CANONICAL if k != "meta"}
        row["meta"] = record.get("meta") if "meta" in record else _meta(record, set(_CANONICAL))
    elif fmt == "processbench":
        used = {"id", "problem", "steps", "label", "final_answer_correct", "reference_answer", "source"}
        row = {
            "id": record.get("id"),
            "problem": record.get("problem"),
            "steps": record.get("steps"),
            "first_error_step": record.get("label"),
            "final_answer_correct": record.get("final_answer_correct"),
            "reference_answer": record.get("reference_answer"),
            "source": record.get("source", f"processbench/{ctx.file_stem}"),
            "meta": _meta(record, used),
        }
    elif fmt == "activeprm":
        steps = record.get("steps")
        n = len(steps) if isinstance(steps, (list, tuple)) else None
        used = {"id", "question", "steps", "hard_labels", "final_answer_correct", "reference_answer", "source"}
        row = {
            "id": record.get("id"),
            "problem": record.get("question"),
            "steps": steps,
            "first_error_step": first_index(record.get("hard_labels"), lambda v: not v, n),
            "final_answer_correct": record.get("final_answer_correct"),
            "reference_answer": record.get("reference_answer"),
            "source": record.get("source"),
            "meta": _meta(record, used),
        }
    elif fmt == "trl":
        steps = record.get("completions")
        n = len(steps) if isinstance(steps, (list, tuple)) else None
        used = {"id", "prompt", "completions", "labels", "final_answer_correct", "reference_answer", "source"}
        row = {
            "id": record.get("id"),
            "problem": record.get("prompt"),
            "steps": steps,
            "first_error_step": first_index(record.get("labels"), lambda v: not v, n),
            "final_answer_correct": record.get("final_answer_correct"),
            "reference_answer": record.get("reference_answer"),
            "source": record.get("source"),
            "meta": _meta(record, used),
        }
    elif fmt == "rollout":
        response = record.get("response")
        if response is not None and not isinstance(response, str):
            raise RowError("wrong type", f"response must be a string, got {type(response).__name__}")
        steps = None
        if response is not None:
            steps = [s.strip() for s in response.split(ctx.step_separator)]
            steps = [s for s in steps if s]
        used = {"id", "problem", "response", "first_error_step", "final_answer_correct", "reference_answer", "source"}
        row = {
            "id": record.get("id"),
            "problem": record.get("problem"),
            "steps": steps,
            "first_error_step": record.get("first_error_step"),
            "final_answer_correct": record.get("final_answer_correct"),
            "reference_answer": record.get("reference_answer"),
            "source": record.get("source"),
            "meta": _meta(record, used),
        }
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return row
