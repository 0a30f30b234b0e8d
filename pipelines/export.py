"""`actprm export`: labelled tables in the formats PRM trainers read.

Input: any table actprm reads (Parquet, JSONL, JSON; a file, a directory or a glob) that has
a `first_error_step` (trajectories, e.g. the world's or ProcessBench's) or a
`label_first_error` (a labelled table) per row, plus `problem` and `steps`; optional
`step_labels` (soft per-step labels, e.g. rollout values). Rows without a label are skipped
and counted.

Formats (the labels are ActPRM's: steps before the earliest error 1, the earliest error 0;
steps after it are unlabelled and dropped):

- `trl`: TRL's stepwise supervision (`trl.experimental.prm`): `prompt` (the problem),
  `completions` (the steps up to the earliest error), `labels` (list of bool). TRL casts labels
  to int, so soft labels go in their own column, `label_probs` (list of float; the soft labels
  where the row has them, else the hard labels as 0.0/1.0);
- `activeprm`: ActivePRM's training format: `question`, `steps` (up to the earliest error),
  `hard_labels` (list of int).

Both keep `id`. Output: one Parquet file, or JSONL when the path ends in `.jsonl`. Both formats
read back with `actprm validate --format trl|activeprm` (the earliest error is recovered).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from actprm.config import ExportConfig
from actprm.errors import UserError
from actprm.io.lock import output_lock
from actprm.io.readers import iter_batches, open_corpus
from actprm.progress import JobResult

FORMATS = ("trl", "activeprm")

SCHEMAS = {
    "trl": pa.schema([("id", pa.string()), ("prompt", pa.string()), ("completions", pa.list_(pa.string())),
                      ("labels", pa.list_(pa.bool_())), ("label_probs", pa.list_(pa.float32()))]),
    "activeprm": pa.schema([("id", pa.string()), ("question", pa.string()), ("steps", pa.list_(pa.string())),
                            ("hard_labels", pa.list_(pa.int64()))]),
}


@dataclass
class ExportResult(JobResult):
    format: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    output: Path | None = None
    seconds: float = 0.0

    def summary_line(self) -> str:
        skipped = sum(self.skipped.values())
        why = f" ({', '.join(f'{k} {v}' for k, v in self.skipped.items())})" if skipped else ""
        return f"export: {self.rows} rows as {self.format}, {skipped} skipped{why} in {self.seconds:.1f}s -> {self.output}"


def _label(row: dict[str, Any]) -> int | None:
    for name in ("label_first_error", "first_error_step"):
        if row.get(name) is not None:
            return int(row[name])
    return None


def stepwise(row: dict[str, Any]) -> tuple[list[str], list[int], list[float]] | str:
    """(steps kept, hard labels, soft labels) of one row, or why it is skipped."""
    steps = row.get("steps")
    label = _label(row)
    if label is None:
        return "no label"
    if not isinstance(row.get("problem"), str) or not isinstance(steps, (list, tuple)) or not steps:
        return "no problem or steps"
    n = len(steps)
    if not -1 <= label < n:
        return "bad label"
    kept = n if label == -1 else label + 1
    hard = [1] * kept if label == -1 else [1] * label + [0]
    soft = row.get("step_labels")
    probs = [float(h) for h in hard]
    if soft is not None:
        probs = [float(soft[i]) if i < len(soft) and soft[i] is not None else p for i, p in enumerate(probs)]
    return [str(s) for s in steps[:kept]], hard, probs


def convert(row: dict[str, Any], fmt: str) -> dict[str, Any] | str:
    """One exported row in `fmt`, or why the row is skipped."""
    got = stepwise(row)
    if isinstance(got, str):
        return got
    steps, hard, probs = got
    if fmt == "trl":
        return {"id": row.get("id"), "prompt": row["problem"], "completions": steps,
                "labels": [bool(h) for h in hard], "label_probs": probs}
    return {"id": row.get("id"), "question": row["problem"], "steps": steps, "hard_labels": hard}


def _read_rows(paths: list[str], result: ExportResult, fmt: str = "auto") -> list[dict[str, Any]]:
    """Valid rows of any supported input (actprm.io.readers; invalid rows are counted as skipped), with
    a labelled table's `label_first_error` and `step_labels` taken back out of `meta`."""
    rows = []
    for batch in iter_batches(open_corpus(paths, fmt)):
        for err in batch.errors:
            kind = f"invalid row ({err['reason'].split(':', 1)[0]})"
            result.skipped[kind] = result.skipped.get(kind, 0) + 1
        for row in batch.valid:
            meta = json.loads(row["meta"]) if row.get("meta") else {}
            if isinstance(meta, dict):
                for name in ("label_first_error", "step_labels"):
                    if name in meta:
                        row[name] = meta[name]
            rows.append(row)
    return rows


def run(cfg: ExportConfig, progress: bool = True) -> ExportResult:
    return export(cfg.input, cfg.output, cfg.format, cfg.overwrite, cfg.input_format)


def export(input: list[str] | str, output: str, fmt: Literal["trl", "activeprm"], overwrite: bool = False,
           input_format: str = "auto") -> ExportResult:
    """Export every labelled row of `input` to `output` in `fmt` (see the module docstring)."""
    start = time.perf_counter()
    if not input:
        raise UserError("export needs --input PATH")
    if not output:
        raise UserError("export needs --output PATH (.parquet, or .jsonl)")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    out = Path(output)
    if out.exists() and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it")
    result = ExportResult(fmt)
    kept = []
    for row in _read_rows([input] if isinstance(input, str) else list(input), result, input_format):
        got = convert(row, fmt)
        if isinstance(got, str):
            result.skipped[got] = result.skipped.get(got, 0) + 1
        else:
            kept.append(got)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # one run per output at a time (exit 2 naming the holder)
        tmp = out.with_name(out.name + ".tmp")
        if out.suffix == ".jsonl":
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        else:
            pq.write_table(pa.Table.from_pylist(kept, schema=SCHEMAS[fmt]), tmp)
        tmp.replace(out)
    result.rows, result.output, result.seconds = len(kept), out, time.perf_counter() - start
    return result
