"""`actprm train`: one PRM training round from labelled rows, in-process or on Ray Train.

    actprm train --trajectories X --annotations ann --output runs/r1 [--model DIR]
    actprm train --workers 4 --use-gpu --address auto ...      # Ray Train, DDP or FSDP workers

1. Labels: trajectories joined with annotations by id, or a labelled table (actprm.labels).
2. One round of `objective` from `model` (actprm.trainer.train_and_save; the checkpoint files are
   actprm.checkpoint's). With the backbone frozen (the default) the backbone runs once over the rows and
   the heads train on its outputs (actprm.features.train_in_process).
3. With `workers > 1`: the labelled rows go into the object store once; each TorchTrainer worker
   loads the start checkpoint, takes its equal share of the examples (rank::world_size) and trains
   with the model wrapped by ray.train.torch.prepare_model: DDP for models that fit a device, FSDP
   (`strategy: fsdp`) when full fine-tuning does not (a 7B backbone with AdamW needs ~16 bytes per
   parameter); rank 0 writes the checkpoint to `output` (a filesystem every worker can reach).
"""

from __future__ import annotations

import sys
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from actprm.checkpoint import resolve_device
from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.features import train_in_process
from actprm.labels import LabelCounts, load_rows
from actprm.trainer import TrainResult, result_from_checkpoint, train_and_save
from pipelines.ray_session import init_ray


def check_train_paths(cfg: TrainConfig) -> Path:
    if not cfg.output:
        raise UserError("no output: pass --output DIR")
    if cfg.objective != "actprm" and cfg.workers > 1:
        raise UserError(f"--objective {cfg.objective} trains in-process: use --workers 1")
    if cfg.labelled:
        if cfg.trajectories or cfg.annotations:
            raise UserError("pass either --labelled, or --trajectories with --annotations, not both")
    elif cfg.objective != "actprm" and cfg.trajectories:
        pass  # the implicit objectives: outcome labels from the trajectories alone (actprm.outcome)
    elif not (cfg.trajectories and cfg.annotations):
        raise UserError("no labels: pass --trajectories PATH and --annotations PATH (or --labelled PATH)")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out}: exists; choose another --output or pass --overwrite")
    return out


def run(cfg: TrainConfig, progress: bool = True) -> TrainResult:
    check_train_paths(cfg)
    if cfg.workers > 1:
        return run_on_ray(cfg)
    device = torch.device(resolve_device(cfg.device))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    counts = LabelCounts()
    rows = load_rows(cfg, counts)
    return train_in_process(cfg, rows, counts, device, progress=progress)


# ------------------------------------------------------------------ on Ray Train


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    cfg = TrainConfig.model_validate(config["cfg"])
    rows = ray.get(config["rows"])
    counts = LabelCounts(**config["counts"])
    ctx = ray.train.get_context()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy=cfg.strategy)

    train_and_save(cfg, rows, counts, ray.train.torch.get_device(), rank=ctx.get_world_rank(),
                   world_size=ctx.get_world_size(), wrap=wrap)


def run_on_ray(cfg: TrainConfig) -> TrainResult:
    out = check_train_paths(cfg)
    cfg = cfg.model_copy(update={"output": str(out.resolve()),
                                 "model": str(Path(cfg.model).resolve()) if cfg.model else None})
    counts = LabelCounts()
    rows = load_rows(cfg, counts)
    if not rows:
        raise UserError("nothing to train on: no labelled trajectory survived the join")
    init_ray(cfg.address)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "rows": ray.put(rows), "counts": counts.as_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=f"actprm-train-{out.name}", storage_path=str(out.parent.resolve() / ".ray_train")),
    )
    trainer.fit()
    return result_from_checkpoint(out)


if __name__ == "__main__":
    from actprm.cli import main

    # the recipe's flags are `actprm train`'s; --workers defaults to 2 here
    argv = sys.argv[1:]
    if not any(a == "--workers" or a.startswith("--workers=") for a in argv):
        argv += ["--workers", "2"]
    sys.exit(main(["train", *argv]))
