"""Data hygiene before paying for labels: exact duplicates, near-duplicate problems, benchmark contamination.

Three rules, applied by `actprm filter` (pipelines/filter.py) over the whole corpus, the
first occurrence (by file, then row) winning; a removed row goes to the errors table with its
reason, nothing is lost:

- `duplicate content: ...` (on by default, `dedup`): the same problem and steps after
  normalisation (Unicode NFKC, lower case, runs of whitespace as one space, trimmed) as an
  earlier row. The judge cache already pays an identical trajectory once; this catches the
  copies that differ only in case or spacing, and keeps them out of training twice.
- `near-duplicate problem: ...` (off by default, `near_dedup`): the problem is a near copy
  (estimated Jaccard similarity of character 5-gram sets >= `near_dedup_threshold`, MinHash
  LSH from `datasketch`) of an earlier, *different* problem text: a problem scraped twice
  with other wording. Rollouts of one problem (the same normalised text) are not duplicates
  of each other and are all kept. Off by default: corpora generated from templates (the
  arithmetic world) are full of near-identical problems that are different problems.
- `contaminated: ...` (on by default): the problem is one of an evaluation set's, exactly after
  normalisation or nearly (Jaccard >= `decontaminate_threshold`, MinHash LSH). The sets are
  `decontaminate` (files or directories in any supported format), by default ProcessBench's
  problems when its files are present (../shared/data/processbench beside the checkout, or
  ACTPRM_PROCESSBENCH); `decontaminate: []` turns it off. ProcessBench's problems come from
  GSM8K, MATH, OlympiadBench and Omni-MATH; NuminaMath overlaps the last three.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actprm.io.readers import iter_batches, open_corpus

SHINGLE = 5
NUM_PERM = 64
_PACKAGE_DIR = Path(__file__).resolve().parent


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]


def content_key(problem: str, steps: list[str]) -> str:
    """Equal for trajectories whose problem and steps are equal after normalisation."""
    return _digest([normalise(problem), [normalise(s) for s in steps]])


def problem_key(problem: str) -> str:
    return _digest(normalise(problem))


def minhash(text: str, num_perm: int = NUM_PERM):
    """datasketch MinHash of the normalised text's character 5-grams (seeded: the same everywhere)."""
    from datasketch import MinHash

    norm = normalise(text)
    grams = {norm[i:i + SHINGLE] for i in range(max(1, len(norm) - SHINGLE + 1))}
    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([g.encode("utf-8") for g in grams])
    return m


def default_eval_sets() -> list[str]:
    """ProcessBench's files when present: $ACTPRM_PROCESSBENCH, else ../shared/data/processbench beside the
    checkout or the working directory."""
    candidates = [os.environ.get("ACTPRM_PROCESSBENCH"),
                  _PACKAGE_DIR.parent.parent / "shared" / "data" / "processbench",
                  Path.cwd().parent / "shared" / "data" / "processbench"]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("*.json")):
            return [str(c)]
    return []


class EvalIndex:
    """The problems of evaluation sets: exact (normalised) and near (MinHash LSH) lookup."""

    def __init__(self, paths: list[str], threshold: float = 0.8, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.exact: dict[str, str] = {}
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if threshold < 1.0 else None
        for path in paths:
            sources = open_corpus([path])
            for batch in iter_batches(sources):
                for row in batch.valid:
                    key = problem_key(row["problem"])
                    if key in self.exact:
                        continue
                    where = f"{Path(batch.source_file).name} id {row['id']}"
                    self.exact[key] = where
                    if self.lsh is not None:
                        self.lsh.insert(key, minhash(row["problem"], num_perm))
        self.size = len(self.exact)

    def match(self, problem: str) -> str | None:
        """The reason a problem is contaminated, or None."""
        key = problem_key(problem)
        if key in self.exact:
            return f"contaminated: the problem of {self.exact[key]}"
        if self.lsh is not None:
            hits = self.lsh.query(minhash(problem, self.num_perm))
            if hits:
                return f"contaminated: nearly the problem of {self.exact[min(hits)]}"
        return None


@functools.cache
def eval_index(paths: tuple[str, ...], threshold: float, num_perm: int = NUM_PERM) -> EvalIndex:
    """One index per process and settings (Ray workers build it once)."""
    return EvalIndex(list(paths), threshold, num_perm)


@dataclass
class FileHygiene:
    """What phase 1 learns about one file's valid rows, in row order."""

    rows: list[tuple[int, str, str, str]] = field(default_factory=list)  # (row_index, id, content key, problem key)
    contaminated: dict[int, str] = field(default_factory=dict)  # row_index -> reason
    signatures: dict[str, Any] = field(default_factory=dict)  # problem key -> its MinHash (near_dedup)


def file_hygiene(batches, cfg: Any, eval_paths: list[str]) -> FileHygiene:
    """Keys, contamination and (with near_dedup) problem signatures of one file's valid rows."""
    info = FileHygiene()
    index = eval_index(tuple(eval_paths), cfg.decontaminate_threshold) if eval_paths else None
    for batch in batches:
        for row, i in zip(batch.valid, batch.valid_index):
            pkey = problem_key(row["problem"])
            info.rows.append((i, row["id"], content_key(row["problem"], row["steps"]), pkey))
            if index is not None:
                reason = index.match(row["problem"])
                if reason:
                    info.contaminated[i] = reason
            if cfg.near_dedup and pkey not in info.signatures:
                info.signatures[pkey] = minhash(row["problem"])
    return info


def plan_removals(files: list[FileHygiene], id_duplicates: list[dict], cfg: Any) -> list[dict[int, str]]:
    """For each file, {row_index: reason} of the rows the hygiene rules remove; the first occurrence (by file,
    then row) wins. Rows already removed as duplicate ids are left to that rule."""
    from datasketch import MinHashLSH

    removals: list[dict[int, str]] = [{} for _ in files]
    contents: dict[str, str] = {}  # content key -> id of the first row
    canonical: dict[str, tuple[str, str | None]] = {}  # problem key -> (first row's id, the problem it nears)
    lsh = MinHashLSH(threshold=cfg.near_dedup_threshold, num_perm=NUM_PERM) if cfg.near_dedup else None
    for f, info in enumerate(files):
        for row_index, rid, ckey, pkey in info.rows:
            if (f, row_index) in id_duplicates[f]:
                continue
            if row_index in info.contaminated:
                removals[f][row_index] = info.contaminated[row_index]
                continue
            if cfg.dedup:
                if ckey in contents:
                    removals[f][row_index] = (f"duplicate content: the same problem and steps (normalised) as "
                                              f"id {contents[ckey]}")
                    continue
                contents[ckey] = rid
            if lsh is not None:
                if pkey not in canonical:
                    sig = info.signatures[pkey]
                    hits = lsh.query(sig)
                    canonical[pkey] = (rid, canonical[min(hits)][0] if hits else None)
                    if not hits:
                        lsh.insert(pkey, sig)
                near = canonical[pkey][1]
                if near is not None:
                    removals[f][row_index] = (f"near-duplicate problem: nearly the problem of id {near} "
                                              f"(Jaccard >= {cfg.near_dedup_threshold:g})")
    return removals
