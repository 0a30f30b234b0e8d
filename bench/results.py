"""Results files of the benchmarks: one JSON object a line, appended as each measurement finishes (a rerun
skips what is there)."""

from __future__ import annotations

import json
from pathlib import Path


def read_results(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
