"""The `verifier` backend: labels from ground truth, with seeded, known imperfection.

It answers each trajectory with its `first_error_step` (the world generator writes it; -1 =
all steps correct), so it can stand in for a judge of known quality at no cost:

- `wrong_rate`: the probability that an answer is wrong, drawn uniformly among the other
  valid labels in -1..n_steps-1;
- `refusal_rate`: the probability that an answer is refused (no label);
- `samples`: independent answers per row, aggregated with `majority` (refused samples are
  not votes; a row fails only when every sample is refused).

Uniform wrong answers with rate w leave ProcessBench's two accuracies (on erroneous and on
correct trajectories) both at 1 - w, so its F1 is 1 - w on any set, balanced or not: the
default 0.18 makes a judge of F1 ~0.82, like QwQ-32B as a critic (0.816, ProcessBench).

Determinism: sample s of row `id` is drawn from a NumPy generator seeded by SHA-256 of
(seed, id, s), so a row gets the same answer in any batch, in any order, in any process (what
resume and Ray need). Each draw takes three uniforms (refuse?, wrong?, which wrong label)
whatever the rates, so with one seed, raising `wrong_rate` only turns more answers wrong.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from numbers import Integral
from typing import Any

import numpy as np

from actprm.judge.base import Annotator, majority

# version of the answer procedure (the RNG scheme above): change it when answers change
PROMPT_VERSION = "verifier-v1"


def draw_rng(seed: int, rid: str, sample: int) -> np.random.Generator:
    """The generator of sample `sample` of row `rid`: the same in every process (no Python `hash()`)."""
    key = json.dumps([int(seed), rid, int(sample)], ensure_ascii=False).encode("utf-8")
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:16], "little"))


def wrong_label(truth: int, n_steps: int, u: float) -> int:
    """The `u`-th (u in [0, 1)) of the n_steps labels in -1..n_steps-1 other than `truth`."""
    k = min(int(u * n_steps), n_steps - 1)
    return k - 1 if k - 1 < truth else k


class VerifierAnnotator(Annotator):
    """Answers from `first_error_step`, wrong with probability `wrong_rate`, refused with `refusal_rate`."""

    def __init__(self, *, wrong_rate: float = 0.18, refusal_rate: float = 0.0, samples: int = 1, seed: int = 0):
        for name, rate in (("wrong_rate", wrong_rate), ("refusal_rate", refusal_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {rate}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.wrong_rate = float(wrong_rate)
        self.refusal_rate = float(refusal_rate)
        self.samples = int(samples)
        self.seed = int(seed)
        self.judge = f"verifier(wrong_rate={self.wrong_rate:g},refusal_rate={self.refusal_rate:g},seed={self.seed})"
        self.prompt_version = PROMPT_VERSION

    def answer(self, rid: str, truth: int, n_steps: int, sample: int) -> int | None:
        """One sample's answer for a row whose true label is `truth`; None = refused."""
        refuse, wrong, pick = draw_rng(self.seed, rid, sample).random(3)
        if refuse < self.refusal_rate:
            return None
        if wrong < self.wrong_rate:
            return wrong_label(truth, n_steps, float(pick))
        return truth

    def annotate_row(self, row: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        rid = row.get("id")
        steps = row.get("steps")
        truth = row.get("first_error_step")
        if truth is None:
            why = "first_error_step is null" if "first_error_step" in row else "the row has no first_error_step"
            return self.failed(rid, f"no ground truth: {why}", attempts=0,
                               latency_s=time.perf_counter() - start)
        if not isinstance(steps, (list, tuple)) or not steps:
            return self.failed(rid, "bad input: steps must be a non-empty list", attempts=0,
                               latency_s=time.perf_counter() - start)
        n = len(steps)
        if isinstance(truth, bool) or not isinstance(truth, Integral) or not -1 <= truth < n:
            return self.failed(rid, f"bad input: first_error_step {truth!r} is not a label in -1..{n - 1}",
                               attempts=0, latency_s=time.perf_counter() - start)
        answers = [self.answer(rid, int(truth), n, s) for s in range(self.samples)]
        votes = [a for a in answers if a is not None]
        raw = "verifier: " + ", ".join("refused" if a is None else str(a) for a in answers)
        if not votes:
            what = "the simulated judge declined to label" if self.samples == 1 else \
                f"all {self.samples} samples were declined"
            return self.failed(rid, f"refusal: {what} (refusal_rate={self.refusal_rate:g})",
                               attempts=self.samples, raw_output=raw, latency_s=time.perf_counter() - start)
        label, agreement = majority(votes)
        return self.labelled(rid, label, votes=votes, agreement=agreement, attempts=self.samples,
                             raw_output=raw, latency_s=time.perf_counter() - start)

    async def annotate_async(self, rows: list[dict[str, Any]],
                             on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            out.append(self.annotate_row(row))
            if on_row is not None:
                on_row(out[-1])
        return out
