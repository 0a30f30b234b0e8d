"""Progress bars and the one summary line every job ends with."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "rows") -> tqdm:
    """A tqdm bar on stderr; off when disabled or when stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        file=sys.stderr,
        disable=(not enabled) or None,  # None: tqdm turns itself off on non-TTYs
    )


@dataclass
class RowCounts:
    """Rows in, rows kept, and errors counted by kind (the part of the reason before ':')."""

    read: int = 0
    valid: int = 0
    errors: Counter = field(default_factory=Counter)

    def add_errors(self, error_rows: list[dict]) -> None:
        for row in error_rows:
            self.errors[row["reason"].split(":", 1)[0]] += 1

    def merge(self, other: "RowCounts") -> "RowCounts":
        self.read += other.read
        self.valid += other.valid
        self.errors.update(other.errors)
        return self

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    def errors_text(self) -> str:
        if not self.errors:
            return "0 errors"
        kinds = ", ".join(f"{kind} {n}" for kind, n in self.errors.most_common())
        return f"{self.n_errors} errors ({kinds})"

    def as_dict(self) -> dict:
        return {"rows_read": self.read, "rows_valid": self.valid, "rows_error": self.n_errors,
                "errors_by_kind": dict(self.errors.most_common())}


class JobResult:
    """What a job returns. The CLI prints `render()`: the one summary line, after a job's `details()`
    (a table, a report's path) where it has some."""

    def summary_line(self) -> str:
        raise NotImplementedError

    def details(self) -> str:
        return ""

    def render(self) -> str:
        details = self.details()
        return f"{details}\n{self.summary_line()}" if details else self.summary_line()


@dataclass
class ReportResult(JobResult):
    """A job whose result is a report (a dict, written as JSON into `output` when there is one)."""

    report: dict[str, Any]
    seconds: float
    output: Path | None
