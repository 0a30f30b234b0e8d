"""The canonical tables, loaded from `data_schemas/*.yaml`, and per-row validation.

`data_schemas/` is the single source of truth: this module turns each YAML file into
an Arrow schema, casts tables to it before anything is written (polars and pyarrow
would otherwise drift between string/large_string, list/large_list), and validates
trajectory rows, giving each bad row a reason a person understands.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import yaml

_SCALARS = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
}


def arrow_type(name: str) -> pa.DataType:
    """`string`, `int32`, ..., or `list<T>` → the Arrow type."""
    match = re.fullmatch(r"list<(\w+)>", name)
    if match:
        return pa.list_(arrow_type(match.group(1)))
    try:
        return _SCALARS[name]
    except KeyError:
        raise ValueError(f"unknown column type {name!r} in data_schemas") from None


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool
    description: str


@dataclass(frozen=True)
class TableSchema:
    name: str
    description: str
    columns: tuple[Column, ...]

    @functools.cached_property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, arrow_type(c.type), nullable=c.nullable) for c in self.columns]
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@functools.cache
def load_schema(name: str) -> TableSchema:
    """The table `name` as described by `data_schemas/<name>.yaml` (with `extends` resolved)."""
    path = importlib.resources.files("data_schemas") / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no schema named {name!r} in data_schemas/")
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    columns: list[Column] = []
    if spec.get("extends"):
        columns.extend(load_schema(spec["extends"]).columns)
    for col in spec["columns"]:
        columns.append(
            Column(
                name=col["name"],
                type=col["type"],
                nullable=bool(col.get("nullable", True)),
                description=" ".join(str(col.get("description", "")).split()),
            )
        )
    return TableSchema(name=spec["name"], description=spec.get("description", ""), columns=tuple(columns))


def arrow_schema(name: str) -> pa.Schema:
    return load_schema(name).arrow


def to_canonical(table: pa.Table, name: str) -> pa.Table:
    """Select, order and cast `table`'s columns to the canonical schema of `name`.

    Optional columns the table lacks are filled with nulls; a missing non-nullable
    column or a cast that loses information raises ValueError.
    """
    schema = arrow_schema(name)
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type != field.type:
                column = column.cast(field.type)
            arrays.append(column)
        elif field.nullable:
            arrays.append(pa.nulls(table.num_rows, type=field.type))
        else:
            raise ValueError(f"table {name!r} needs column {field.name!r}")
    return pa.Table.from_arrays(arrays, schema=schema)


def table_from_rows(rows: list[dict[str, Any]], name: str) -> pa.Table:
    """Python rows (dicts) → an Arrow table with exactly the canonical schema."""
    return pa.Table.from_pylist(rows, schema=arrow_schema(name))


# --------------------------------------------------------------------------- rows


class RowError(Exception):
    """A row that cannot be used. `kind` is what summaries count; `detail` explains."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.detail = detail

    @property
    def reason(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Limits:
    """Size limits per row; characters, not tokens (tokenisation comes later).

    `max_depth` and `max_row_bytes` apply to a row's JSON text before it is parsed (a row nesting
    200,000 `[` must not be built in memory); `max_id_chars` bounds an id, which is copied into every
    table and join.
    """

    max_problem_chars: int = 50_000
    max_step_chars: int = 20_000
    max_steps: int = 1_000
    max_depth: int = 64
    max_row_bytes: int = 64 * 2**20
    max_id_chars: int = 1_000
    #: a Parquet column chunk's uncompressed size, read from the file's metadata before anything is
    #: decompressed (a 10 KB file may hold a 1 GiB chunk of repeated text)
    max_chunk_bytes: int = 512 * 2**20


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _check_text(name: str, value: str) -> None:
    """A lone surrogate (a `\\ud800` escape without its pair) is not Unicode text: it cannot be written
    as UTF-8, and would silently become `?` downstream."""
    bad = _SURROGATE.search(value)
    if bad:
        raise RowError("invalid text", f"{name} holds a lone surrogate {bad.group()!a} at character {bad.start()}")


def _check_texts(problem: str, steps: list[str] | tuple[str, ...]) -> None:
    """`_check_text` on the problem and every step in one pass (ASCII text, most rows, is skipped at once)."""
    blob = "\x00".join((problem, *steps))
    if blob.isascii() or not _SURROGATE.search(blob):
        return
    _check_text("problem", problem)
    for i, step in enumerate(steps):
        _check_text(f"step {i}", step)


def check_id(rid: Any, limits: Limits) -> str:
    """The row's id if usable; RowError otherwise (see data_schemas/trajectories.yaml for the rules)."""
    if rid is None:
        raise RowError("missing id", "the row has no id (null or absent)")
    if not isinstance(rid, str):
        raise RowError("wrong type", f"id must be a string, got {_type_name(rid)}")
    if rid == "":
        raise RowError("missing id", "the id is an empty string")
    if rid.isspace():
        raise RowError("missing id", "the id is only whitespace")
    if len(rid) > limits.max_id_chars:
        raise RowError("too large", f"the id has {len(rid)} characters, over the limit of {limits.max_id_chars}")
    bad = _CONTROL.search(rid)
    if bad:
        raise RowError("bad id", f"the id holds a control character {bad.group()!a} at character {bad.start()}")
    _check_text("id", rid)
    return rid


def check_trajectory(row: dict[str, Any], limits: Limits, allow_empty_steps: bool = False) -> dict[str, Any]:
    """Validate one row already mapped onto the trajectories columns.

    Returns the row with optional columns filled in; raises RowError otherwise.
    The duplicate-id rule needs the whole corpus and lives with the reader.
    """
    check_id(row.get("id"), limits)

    problem = row.get("problem")
    if problem is None:
        raise RowError("missing problem", "problem is null or absent")
    if not isinstance(problem, str):
        raise RowError("wrong type", f"problem must be a string, got {_type_name(problem)}")
    if not problem or problem.isspace():
        raise RowError("missing problem", "problem is empty" if not problem else "problem is only whitespace")
    if len(problem) > limits.max_problem_chars:
        raise RowError(
            "too large", f"problem has {len(problem)} characters, over the limit of {limits.max_problem_chars}"
        )

    steps = row.get("steps")
    if steps is None:
        raise RowError("missing steps", "steps is null or absent")
    if not isinstance(steps, (list, tuple)):
        raise RowError("wrong type", f"steps must be a list of strings, got {_type_name(steps)}")
    if len(steps) == 0:
        raise RowError("empty steps", "steps is an empty list")
    if len(steps) > limits.max_steps:
        raise RowError("too large", f"{len(steps)} steps, over the limit of {limits.max_steps}")
    for i, step in enumerate(steps):
        if step is None:
            raise RowError("null step", f"step {i} is null")
        if not isinstance(step, str):
            raise RowError("wrong type", f"step {i} must be a string, got {_type_name(step)}")
        if len(step) > limits.max_step_chars:
            raise RowError(
                "too large", f"step {i} has {len(step)} characters, over the limit of {limits.max_step_chars}"
            )
        if (not step or step.isspace()) and not allow_empty_steps:
            raise RowError("empty step", f"step {i} is empty" if not step else f"step {i} is only whitespace")

    fes = row.get("first_error_step")
    if fes is not None:
        if isinstance(fes, bool) or not isinstance(fes, int):
            raise RowError("wrong type", f"first_error_step must be an integer or null, got {_type_name(fes)}")
        if fes < -1 or fes >= len(steps):
            raise RowError(
                "bad first_error_step",
                f"first_error_step {fes} is outside -1..{len(steps) - 1} for {len(steps)} steps",
            )

    for name, kind in (("final_answer_correct", bool), ("reference_answer", str), ("source", str), ("meta", str)):
        value = row.get(name)
        if value is not None and not isinstance(value, kind):
            raise RowError("wrong type", f"{name} must be {kind.__name__} or null, got {_type_name(value)}")
        if isinstance(value, str):
            _check_text(name, value)
    _check_texts(problem, steps)

    return {name: row.get(name) for name in load_schema("trajectories").names} | {"steps": list(steps)}


def row_json(record: Any) -> str:
    """The original row as JSON text, for the errors table. Never fails, and is always writable UTF-8
    (a lone surrogate is kept as its `\\ud800` escape)."""
    if isinstance(record, str):
        text = record
    else:
        try:
            text = json.dumps(record, ensure_ascii=False, default=repr)
        except (ValueError, RecursionError):  # a circular or absurdly deep value: never from our readers
            text = repr(type(record))
    if _SURROGATE.search(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(record, str) else \
            json.dumps(record, ensure_ascii=True, default=repr)
    return text


def error_row(source_file: str, row_index: int, rid: Any, reason: str, record: Any) -> dict[str, Any]:
    """A row of the errors table. `id` is kept only when it is a usable id (else null: it is in row_json)."""
    try:
        rid = check_id(rid, Limits())
    except RowError:
        rid = None
    return {
        "source_file": source_file,
        "row_index": row_index,
        "id": rid,
        "reason": reason,
        "row_json": row_json(record),
    }
