"""The models shipped in the package (actprm/assets/): where they are, and the names rows record for them."""

from __future__ import annotations

import importlib.resources
import pathlib

#: `prm_model` of rows scored by the shipped PRM, and how it is recorded (the same on every machine)
DEFAULT_MODEL_NAME = "actprm/assets/prm"
#: how the shipped world backbone is recorded (a reference model, a prover)
SHIPPED_BACKBONE = "actprm/assets/backbone"


def default_backbone_path() -> pathlib.Path:
    """The world's policy backbone shipped in the package (a causal LM; pipelines/pretrain_backbone.py)."""
    return pathlib.Path(str(importlib.resources.files("actprm") / "assets" / "backbone"))


def default_prm_path() -> pathlib.Path:
    """The default PRM shipped in the package: the world backbone with K=8 seeded heads."""
    return default_backbone_path().parent / "prm"
