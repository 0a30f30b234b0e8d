"""A uniform random sample of a corpus, and its scores: what `estimate` and `--target-rate` work on.

The sample is the bottom-k by a hash of the row id (`uncertainty.random_score(id, seed)`): uniform
without replacement, the same on every run and machine, and mergeable — the bottom-k of per-file
bottom-k samples is the corpus' bottom-k — so Ray tasks can each sample a file and the driver
merge them (pipelines/score_filter.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from actprm.uncertainty import random_score


class BottomK:
    """The k rows with the smallest id hash seen so far (and how many rows were seen)."""

    def __init__(self, k: int, seed: int = 0):
        self.k, self.seed = k, seed
        self.seen = 0  # valid rows offered
        self.read = 0  # rows read (sample_corpus sets it)
        self._heap: list[tuple[float, str, dict[str, Any]]] = []  # (-key, id, row): a max-heap on key

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.seen += 1
            if self.k <= 0:
                continue
            item = (-random_score(str(row["id"]), self.seed), str(row["id"]), row)
            if len(self._heap) < self.k:
                heapq.heappush(self._heap, item)
            elif item[:2] > self._heap[0][:2]:
                heapq.heapreplace(self._heap, item)

    def merge(self, other: BottomK) -> BottomK:
        self.add(other.rows())
        self.seen += other.seen - len(other.rows())
        return self

    def rows(self) -> list[dict[str, Any]]:
        """The sample, in key order."""
        return [row for _, _, row in sorted(self._heap, key=lambda t: (-t[0], t[1]))]


def sample_corpus(sources: list, cfg: Any, k: int, seed: int = 0) -> BottomK:
    """A bottom-k sample of the valid rows of `sources` (read and validated as every job does)."""
    from actprm.io.readers import iter_batches

    sample = BottomK(k, seed)
    sample.read = 0  # rows read, valid or not
    for batch in iter_batches(sources, limits=cfg.limits, step_separator=cfg.step_separator,
                              batch_rows=cfg.batch_rows):
        sample.add(batch.valid)
        sample.read += batch.n_read
    return sample


def score_rows(cfg: Any, rows: list[dict[str, Any]], loaded: tuple | None = None) -> tuple[list, list[str]]:
    """Per-step head probabilities of `rows` with the config's PRM: (probs of the scorable rows, their ids).

    Rows whose first step does not fit the model are left out (the score job sends them to errors).
    `loaded`: actprm.score.load_for_scoring(cfg), when the caller has it already.
    """
    from actprm.score import load_for_scoring
    from actprm.scoring import score_trajectories

    device, model, tokenizer, _, batch_tokens = loaded or load_for_scoring(cfg)
    results = score_trajectories(model, tokenizer, [r["problem"] for r in rows], [r["steps"] for r in rows],
                                 batch_tokens=batch_tokens, max_length=cfg.max_length, device=device,
                                 system_prompt=getattr(cfg, "system_prompt", None))
    ok = [(r, res) for r, res in zip(rows, results) if res.error is None]
    return [res.probs for _, res in ok], [r["id"] for r, _ in ok]
