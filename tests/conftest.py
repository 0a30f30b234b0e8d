import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROCESSBENCH = REPO.parent / "shared" / "data" / "processbench"


@pytest.fixture
def write_jsonl(tmp_path):
    def write(name: str, rows: list, raw_lines: list[str] | None = None) -> Path:
        path = tmp_path / name
        lines = [json.dumps(r) for r in rows] + list(raw_lines or [])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    return write


def good_row(i: int, **extra) -> dict:
    return {"id": f"t{i}", "problem": f"What is {i} + 1?", "steps": [f"{i} + 1 = {i + 1}", f"The answer is {i + 1}."],
            "first_error_step": -1, **extra}
