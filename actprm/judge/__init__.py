"""Annotators: who labels the trajectories the PRM is unsure of.

    Annotator            the interface (base.py): rows in, one annotations row each out
    VerifierAnnotator    `verifier`: ground truth with seeded wrong answers and refusals
    OpenAIJudge          `openai`: a judge model over any OpenAI-compatible endpoint (openai_judge.py),
                         with its prompt and parser (prompt.py) and answer cache (cache.py)
    RolloutAnnotator     `rollout`: Math-Shepherd / PAV step values from a prover policy's completions
                         (rollout.py; the prover, in-process or over an endpoint: prover.py)
    make_annotator(cfg)  the backend named by `cfg.backend`

The annotations table is data_schemas/annotations.yaml.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from actprm.errors import UserError
from actprm.judge.base import Annotator, error_kind, failed_row, labelled_row, majority
from actprm.judge.cache import AnswerCache, segments_dir
from actprm.judge.verifier import VerifierAnnotator


def cache_path(cfg: Any) -> Path | None:
    """Where the judge caches its answers: `cfg.cache`, else OUTPUT/judge_cache.sqlite."""
    if getattr(cfg, "cache", None):
        return Path(cfg.cache)
    if getattr(cfg, "output", None):
        return Path(cfg.output) / "judge_cache.sqlite"
    return None


def _answer_cache(cfg: Any) -> Any:
    """The answer cache at `cache_path(cfg)` (None without one), with what a killed Ray run left merged in."""
    path = cache_path(cfg)
    cache = AnswerCache(path) if path is not None else None
    if cache is not None:  # what a killed Ray run (pipelines/annotate.py) left in its segments
        cache.merge_segments(segments_dir(path))
    return cache


# backend name -> "module:class" of its annotator. The class is built from the job config (JudgeConfig or a
# subclass) and a spend budget (SpendBudget or None: from the config's max_spend/max_calls); a paid backend
# gets its answer cache after its settings were checked. A backend's module is loaded when it is used (a
# local prover brings torch and transformers); a new backend adds its line here and its name to
# JudgeConfig.backend in actprm/config.py.
BACKENDS: dict[str, str] = {
    "verifier": "actprm.judge.verifier:VerifierAnnotator",
    "openai": "actprm.judge.openai_judge:OpenAIJudge",
    "rollout": "actprm.judge.rollout:RolloutAnnotator",
}


def make_annotator(cfg: Any, *, budget: Any = None) -> Annotator:
    """The annotator named by `cfg.backend`, built from the config's settings; `budget` a SpendBudget
    shared with other work (default: one from the config's `max_spend` / `max_calls`, if set)."""
    name = getattr(cfg, "backend", None)
    if name not in BACKENDS:
        raise UserError(f"unknown annotator backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if name == "verifier":  # free: a budget has nothing to stop, no answer to cache
        return VerifierAnnotator(wrong_rate=cfg.wrong_rate, refusal_rate=cfg.refusal_rate,
                                 samples=cfg.samples, seed=cfg.seed)
    module, cls = BACKENDS[name].split(":")
    judge = getattr(importlib.import_module(module), cls)(cfg, cache=None, budget=budget)
    judge.cache = _answer_cache(cfg)
    return judge


__all__ = [
    "BACKENDS",
    "Annotator",
    "VerifierAnnotator",
    "cache_path",
    "error_kind",
    "failed_row",
    "labelled_row",
    "majority",
    "make_annotator",
]
