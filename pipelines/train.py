"""Recipe: one PRM training round on a Ray cluster (Ray Train, DDP or FSDP workers).

    python -m pipelines.train --config configs/train.yaml --workers 4 --use-gpu --address auto
    actprm train --workers 2 ...                       # the same recipe from the CLI

1. Driver: join trajectories with annotations by id (actprm.train.load_rows) and put the
   labelled rows in the object store once.
2. Workers (`workers` of them, TorchTrainer): each loads the start checkpoint, takes its
   equal share of the examples (rank::world_size), and runs actprm.train.train_round with
   the model wrapped by ray.train.torch.prepare_model: DDP for models that fit a device,
   FSDP (`strategy: fsdp`) when full fine-tuning does not (a 7B backbone with AdamW needs
   ~16 bytes per parameter, over 100 GB: more than one GPU under DDP); or keep DDP and
   set `backbone: frozen`.
3. Rank 0 writes the new checkpoint to `output` (a filesystem every worker can reach on a
   cluster), exactly as `actprm train` does in-process.

With `workers: 1` the CLI runs the in-process path instead (no Ray).
"""

from __future__ import annotations

import sys
from pathlib import Path

from actprm.config import TrainConfig
from actprm.errors import UserError
from actprm.train import (
    LabelCounts,
    check_train_paths,
    load_rows,
    result_from_checkpoint,
    train_and_save,
)


def worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    rows = ray.get(config["rows"])
    counts = LabelCounts(**config["counts"])
    ctx = ray.train.get_context()
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)

    def wrap(model):
        return ray.train.torch.prepare_model(model, parallel_strategy=cfg.strategy)

    train_and_save(cfg, rows, counts, ray.train.torch.get_device(), rank=ctx.get_world_rank(),
                   world_size=ctx.get_world_size(), wrap=wrap)


def run(cfg: TrainConfig, address: str | None = None, progress: bool = True):
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipelines.ray_session import init_ray

    out = check_train_paths(cfg)
    cfg = cfg.model_copy(update={"output": str(out.resolve()),
                                 "model": str(Path(cfg.model).resolve()) if cfg.model else None})
    counts = LabelCounts()
    rows = load_rows(cfg, counts)  # 1. driver: the join
    if not rows:
        raise UserError("nothing to train on: no labelled trajectory survived the join")
    init_ray(address)
    trainer = TorchTrainer(  # 2-3. workers train; rank 0 writes the checkpoint
        worker_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "rows": ray.put(rows), "counts": counts.as_dict()},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(name=f"actprm-train-{out.name}", storage_path=str(out.parent.resolve() / ".ray_train")),
    )
    trainer.fit()
    return result_from_checkpoint(out)


def main(argv: list[str] | None = None) -> int:
    from actprm.cli import main as cli_main

    # the recipe's flags are `actprm train`'s; --workers defaults to 2 here
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--workers" or a.startswith("--workers=") for a in argv):
        argv += ["--workers", "2"]
    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
