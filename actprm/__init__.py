"""actprm: active-learning process reward models at corpus scale.

The public Python API (docs/python-api.md) is the names in ``__all__``: load a PRM, score trajectories,
pick the uncertain ones, label them, train a round, evaluate, and PRIME-style rewards for an RL loop.
They load on first use (torch and transformers with them), so ``import actprm`` itself stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (loaded on first access)
_EXPORTS: dict[str, str] = {
    # rows
    "to_trajectories": "actprm.api",
    "read_trajectories": "actprm.api",
    "generate": "actprm.api",
    # the model and its scores
    "PRM": "actprm.api",
    "load_prm": "actprm.api",
    "ScoreResult": "actprm.scoring",
    "score": "actprm.api",
    "RuleSettings": "actprm.config",
    "select": "actprm.api",
    # labels
    "annotate": "actprm.api",
    "JudgeConfig": "actprm.config",
    "Annotator": "actprm.judge.base",
    "join_labels": "actprm.api",
    # training and evaluation
    "train": "actprm.api",
    "TrainResult": "actprm.trainer",
    "NothingToTrain": "actprm.trainer",
    "evaluate": "actprm.api",
    "Evaluation": "actprm.api",
    # PRIME-style rewards
    "step_rewards": "actprm.api",
    "outcome_label": "actprm.outcome",
    # errors
    "UserError": "actprm.errors",
}

__all__ = [
    "__version__",
    "to_trajectories",
    "read_trajectories",
    "generate",
    "PRM",
    "load_prm",
    "ScoreResult",
    "score",
    "RuleSettings",
    "select",
    "annotate",
    "JudgeConfig",
    "Annotator",
    "join_labels",
    "train",
    "TrainResult",
    "NothingToTrain",
    "evaluate",
    "Evaluation",
    "step_rewards",
    "outcome_label",
    "UserError",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these on first use
    from actprm.api import (
        PRM,
        Evaluation,
        annotate,
        evaluate,
        generate,
        join_labels,
        load_prm,
        read_trajectories,
        score,
        select,
        step_rewards,
        to_trajectories,
        train,
    )
    from actprm.config import JudgeConfig, RuleSettings
    from actprm.errors import UserError
    from actprm.judge.base import Annotator
    from actprm.outcome import outcome_label
    from actprm.scoring import ScoreResult
    from actprm.trainer import NothingToTrain, TrainResult


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'actprm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
