"""Labelled subsets (ProcessBench's files, PRMBench's, the world's eval set): one subset per path, named by
its stem, and the labelled rows each gives to evaluate."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actprm import prmbench
from actprm.errors import UserError
from actprm.io.readers import SourceFile, iter_batches, open_corpus
from actprm.progress import RowCounts
from actprm.schemas import Limits, RowError, check_trajectory, error_row


@dataclass
class Subset:
    name: str
    path: str
    sources: list[SourceFile]
    counts: RowCounts = field(default_factory=RowCounts)
    unlabelled: int = 0
    truncated: int = 0
    unscorable: int = 0

    @property
    def benchmark(self) -> str:
        """prmbench when its files are PRMBench's, else processbench (ProcessBench's metric applies)."""
        return "prmbench" if self.sources and self.sources[0].fmt == "prmbench" else "processbench"


def _expand(data: list[str]) -> list[str]:
    paths: list[str] = []
    for item in data:
        if any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise UserError(f"{item}: no file matches this pattern")
            paths += matches
        else:
            paths.append(item)
    return paths


def subset_name(path: str) -> str:
    """A file's stem before its first dot (`gsm8k.json` -> gsm8k), a directory's name."""
    p = Path(path)
    if p.is_dir():
        return p.name if p.name not in ("", ".", "..") else p.resolve().name
    return p.name.split(".")[0]


def resolve_subsets(data: list[str], fmt: str = "auto") -> list[Subset]:
    """One subset per --data path (a glob: per match), each pre-flighted; names must be unique."""
    if not data:
        raise UserError("no data: pass --data PATH... (one file or directory per subset)")
    subsets: dict[str, Subset] = {}
    for path in _expand(data):
        if not Path(path).exists():
            raise UserError(f"{path}: no such file or directory")
        name = subset_name(path)
        if name in subsets:
            raise UserError(f"--data {subsets[name].path} and {path} are both subset {name!r} "
                            f"(a subset is named by its file stem or directory name); rename one")
        sources = open_corpus([path], fmt)
        if len({src.fmt == "prmbench" for src in sources}) > 1:
            raise UserError(f"{path}: holds PRMBench files and files of other formats; give them as separate --data")
        subsets[name] = Subset(name, path, sources)
    return list(subsets.values())


@dataclass
class LabelledBatch:
    """What one batch of a subset gives to evaluate: labelled rows, error rows, rows without a label."""

    n_read: int
    rows: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    unlabelled: int = 0


def prmbench_samples(row: dict[str, Any], limits: Limits) -> list[dict[str, Any]]:
    """A valid PRMBench row's samples: the modified solution, and for a `redundency` row its original solution
    as a `correct` sample (docs/evaluation.md, "PRMBench")."""
    meta = json.loads(row["meta"])
    samples = [row | {"benchmark": "prmbench", "classification": meta["classification"],
                      "error_steps": list(meta["error_steps"])}]
    if meta["classification"] == prmbench.CORRECT_FROM:
        original = {"id": prmbench.sample_id(prmbench.CORRECT, str(meta["idx"])), "problem": meta.get("original_question"),
                    "steps": meta.get("original_process"), "first_error_step": -1, "source": "prmbench/correct"}
        try:
            original = check_trajectory(original, limits, allow_empty_steps=True)
        except RowError as exc:
            raise RowError(exc.kind, f"its original solution (the correct sample): {exc.detail}") from None
        samples.append(original | {"benchmark": "prmbench", "classification": prmbench.CORRECT, "error_steps": []})
    return samples


def labelled_batches(subset: Subset, *, limits: Limits, step_separator: str, batch_rows: int = 2048,
                     seen: set[str] | None = None) -> Iterator[LabelledBatch]:
    """The subset's rows in batches: those with a label to evaluate (PRMBench: its samples, each id once over
    the `seen` set shared by all subsets, as the official scorer keeps one), the refused ones as error rows."""
    seen = set() if seen is None else seen
    for batch in iter_batches(subset.sources, limits=limits, step_separator=step_separator, batch_rows=batch_rows):
        if subset.benchmark != "prmbench":
            rows = [r for r in batch.valid if r["first_error_step"] is not None]
            yield LabelledBatch(batch.n_read, rows, batch.errors, len(batch.valid) - len(rows))
            continue
        rows, errors = [], list(batch.errors)
        for row, index in zip(batch.valid, batch.valid_index):
            try:
                samples = prmbench_samples(row, limits)
                for sample in samples:
                    if sample["id"] in seen:
                        raise RowError("duplicate id", f"{sample['id']!r} is already in an earlier PRMBench file")
            except RowError as exc:
                record = json.loads(row["meta"]) | {"modified_question": row["problem"], "modified_process": row["steps"]}
                errors.append(error_row(batch.source_file, index, row["id"], exc.reason, record))
                continue
            seen.update(s["id"] for s in samples)
            rows += samples
        yield LabelledBatch(batch.n_read, rows, errors)
