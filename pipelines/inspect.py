"""`actprm inspect PATH`: what made a Parquet table (its provenance), its schema and row count."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from actprm import provenance
from actprm.config import InspectConfig
from actprm.progress import JobResult


@dataclass
class InspectResult(JobResult):
    info: dict[str, Any]
    as_json: bool

    def summary_line(self) -> str:
        return json.dumps(self.info, indent=2) if self.as_json else provenance.format_inspection(self.info)


def run(cfg: InspectConfig, progress: bool = True) -> InspectResult:
    return InspectResult(provenance.inspect(cfg.path), cfg.as_json)
