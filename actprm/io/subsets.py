"""Labelled subsets (ProcessBench's files, the world's eval set): one subset per path, named by its stem."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from actprm.errors import UserError
from actprm.io.readers import SourceFile, open_corpus
from actprm.progress import RowCounts


@dataclass
class Subset:
    name: str
    path: str
    sources: list[SourceFile]
    counts: RowCounts = field(default_factory=RowCounts)
    unlabelled: int = 0
    truncated: int = 0
    unscorable: int = 0


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
        subsets[name] = Subset(name, path, open_corpus([path], fmt))
    return list(subsets.values())
