"""`actprm init-model`: an ensemble PRM from a preset (random init, seeded) or a pretrained backbone, with fresh heads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from actprm.config import InitModelConfig
from actprm.errors import UserError
from actprm.io.writers import check_output_dir, replaced_dir
from actprm.model import count_parameters, from_backbone, init_model
from actprm.progress import JobResult


@dataclass
class InitModelResult(JobResult):
    cfg: InitModelConfig
    parameters: int
    max_length: int
    output: Path

    def summary_line(self) -> str:
        cfg = self.cfg
        source = f"backbone {cfg.backbone}" if cfg.backbone else f"preset {cfg.preset}"
        features = f", step features {'+'.join(cfg.step_features)}" if cfg.step_features else ""
        return (f"init-model: {source}, {self.parameters / 1e6:.2f}M backbone parameters, {cfg.n_heads} heads"
                f"{features}, max length {self.max_length}, seed {cfg.seed} -> {self.output}")


def run(cfg: InitModelConfig, progress: bool = True) -> InitModelResult:
    out = check_output_dir(cfg.output, cfg.overwrite)
    try:
        if cfg.backbone:
            model, tokenizer = from_backbone(cfg.backbone, n_heads=cfg.n_heads, seed=cfg.seed,
                                             step_features=cfg.step_features)
        else:
            model, tokenizer = init_model(cfg.preset, n_heads=cfg.n_heads, seed=cfg.seed,
                                          step_features=cfg.step_features)
    except (OSError, ValueError) as exc:  # no such backbone / not a model / features it cannot give
        raise UserError(f"init-model: {str(exc).splitlines()[0]}") from None
    with replaced_dir(out) as staging:  # the output holds only what this run wrote, or stays as it was
        model.save_pretrained(staging, tokenizer=tokenizer)
    return InitModelResult(cfg, count_parameters(model.backbone), model.max_length, out)
