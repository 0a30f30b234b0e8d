"""Input formats: how a record of each format users have maps onto the trajectories table.

| format        | columns it needs              | mapping                                                      |
|---------------|-------------------------------|--------------------------------------------------------------|
| canonical     | problem, steps                | as is (see data_schemas/trajectories.yaml)                   |
| processbench  | problem, steps, label         | label → first_error_step; source = processbench/<file stem>  |
| activeprm     | question, steps               | question → problem; first 0 in hard_labels → first_error_step; |
|               |                               | soft_labels → step_labels (soft targets, kept in `meta`)     |
| trl           | prompt, completions           | prompt → problem; completions → steps; first False in labels |
| rollout       | problem, response             | response split into steps on a separator (default blank line)|
| prmbench      | modified_question,            | PRMBench's rows: id `<classification>_<idx>`, the modified    |
|               | modified_process,             | solution; first_error_step = min(error_steps) - 1 (they are   |
|               | classification                | 1-based); the rest (original solution too) kept in `meta`     |

Rows without an `id` get a content hash (`content_id`), stable across runs and machines.
Fields with no column in the trajectories table are kept as JSON in `meta`.  Per-step soft
labels (ActivePRM's `soft_labels`) are kept there as `step_labels`, the name `actprm train`
trains on (soft targets win over the hard label where given).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from actprm import prmbench
from actprm.schemas import RowError, load_schema

FORMATS = ("canonical", "processbench", "activeprm", "trl", "rollout", "prmbench")

REQUIRED: dict[str, tuple[str, ...]] = {
    "canonical": ("problem", "steps"),
    "processbench": ("problem", "steps", "label"),
    "activeprm": ("question", "steps"),
    "trl": ("prompt", "completions"),
    "rollout": ("problem", "response"),
    "prmbench": ("modified_question", "modified_process", "classification"),
}


def detect_format(columns: list[str] | set[str]) -> str | None:
    """The format whose shape these columns have, or None."""
    cols = set(columns)
    if set(REQUIRED["prmbench"]) <= cols:
        return "prmbench"
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

# per format: canonical column -> the record's column (others keep their canonical name)
RENAMES: dict[str, dict[str, str]] = {
    "canonical": {},
    "processbench": {"first_error_step": "label"},
    "activeprm": {"problem": "question"},
    "trl": {"problem": "prompt", "steps": "completions"},
    "rollout": {"steps": "response"},
}
# formats whose per-step labels give first_error_step: the first falsy label
STEP_LABELS = {"activeprm": "hard_labels", "trl": "labels"}
# formats with per-step soft labels: their column, kept in meta as step_labels
SOFT_LABELS = {"activeprm": "soft_labels"}


def soft_labels(values: Any) -> list[float | None] | None:
    """Per-step soft labels: a list of numbers in [0, 1] (or nulls: that step untrained); a RowError otherwise."""
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        raise RowError("wrong type", f"soft labels must be a list, got {type(values).__name__}")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise RowError("bad label", f"soft label {i} must be a number in [0, 1], got {v!r}")
        out.append(float(v))
    return out


def split_response(response: Any, separator: str) -> list[str] | None:
    """A rollout's response text → its non-empty, stripped steps."""
    if response is None:
        return None
    if not isinstance(response, str):
        raise RowError("wrong type", f"response must be a string, got {type(response).__name__}")
    return [s for s in (part.strip() for part in response.split(separator)) if s]


def prmbench_trajectory(record: dict[str, Any]) -> dict[str, Any]:
    """A PRMBench row's modified solution as a trajectory (its class and 1-based error steps checked)."""
    classification = prmbench.check_classification(record.get("classification"))
    idx = record.get("idx")
    if idx is None or isinstance(idx, bool) or not isinstance(idx, (str, int)):
        raise RowError("missing id", f"idx must be a string, got {idx!r}")
    steps = record.get("modified_process")
    if not isinstance(steps, (list, tuple)):
        raise RowError("wrong type", f"modified_process must be a list of strings, got {type(steps).__name__}")
    error_steps = prmbench.error_steps_of(record, len(steps))
    row: dict[str, Any] = {col: None for col in _CANONICAL}
    used = {"modified_question", "modified_process"}
    extra = {k: v for k, v in record.items() if k not in used}
    row.update(id=prmbench.sample_id(classification, str(idx)), problem=record.get("modified_question"),
               steps=list(steps), first_error_step=min(error_steps) - 1, source=f"prmbench/{classification}",
               meta=json.dumps(extra, ensure_ascii=False, default=repr, sort_keys=True))
    return row


def to_trajectory(record: dict[str, Any], fmt: str, ctx: MapContext) -> dict[str, Any]:
    """Map one record of format `fmt` onto the trajectories columns (not yet validated)."""
    if fmt == "prmbench":
        return prmbench_trajectory(record)
    if fmt not in RENAMES:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    names = {col: RENAMES[fmt].get(col, col) for col in _CANONICAL if col != "meta"}
    row = {col: record.get(name) for col, name in names.items()}
    used = set(names.values())
    if fmt == "rollout":
        row["steps"] = split_response(row["steps"], ctx.step_separator)
    if fmt in STEP_LABELS:
        steps = row["steps"]
        n_steps = len(steps) if isinstance(steps, (list, tuple)) else None
        row["first_error_step"] = first_index(record.get(STEP_LABELS[fmt]), lambda v: not v, n_steps)
        used.add(STEP_LABELS[fmt])
    soft = None
    if fmt in SOFT_LABELS and SOFT_LABELS[fmt] in record:
        soft = soft_labels(record.get(SOFT_LABELS[fmt]))
        used.add(SOFT_LABELS[fmt])
    if fmt == "processbench" and row["source"] is None:
        row["source"] = f"processbench/{ctx.file_stem}"
    if fmt == "canonical" and "meta" in record:
        row["meta"] = record["meta"]
    else:
        extra = {k: v for k, v in record.items() if k not in used}
        if soft is not None:
            extra["step_labels"] = soft
        row["meta"] = json.dumps(extra, ensure_ascii=False, default=repr, sort_keys=True) if extra else None
    return row
