"""The generate job: trajectories of a verifiable world as Parquet shards.

    DIR/part-00000.parquet ...   trajectories schema, with the true first_error_step
    DIR/_world.json              world, parameters, seed, split, rows, seconds

`DIR` is itself a valid `--input` (files starting with `_` are not read). The job
writes into a staging directory that replaces `DIR` only when every shard is
written, so a killed run leaves `DIR` as it was.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from actprm.config import GenerateConfig
from actprm.errors import UserError
from actprm.io.writers import ShardWriter, check_output_dir, replaced_dir
from actprm.progress import JobResult, progress_bar
from actprm.world.arith import Generator, load_world

WORLD_FILE = "_world.json"


@dataclass
class GenerateResult(JobResult):
    rows: int
    with_error: int
    seconds: float
    output: Path
    split: str

    def summary_line(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        share = self.with_error / self.rows if self.rows else 0.0
        return (f"generate: {self.rows} {self.split} trajectories, {share:.1%} with an error, "
                f"in {self.seconds:.1f}s ({rate:,.0f} rows/s) -> {self.output}")


def run(cfg: GenerateConfig, progress: bool = True) -> GenerateResult:
    if not cfg.n:
        raise UserError("no size: pass --n N (trajectories to write)")
    out = check_output_dir(cfg.output, cfg.overwrite)
    world = load_world(cfg.world_config)
    gen = Generator(world, seed=cfg.seed)
    split = "eval" if cfg.eval_set else "train"
    start = time.perf_counter()
    with_error = 0
    with replaced_dir(out) as staging:
        with ShardWriter(staging, "trajectories", cfg.shard_rows, "part") as writer, \
             progress_bar(cfg.n, "generate", progress) as bar:
            chunk = min(cfg.shard_rows, 10_000)
            for lo in range(0, cfg.n, chunk):
                rows = list(gen.rows(lo, min(cfg.n, lo + chunk), split))
                with_error += sum(r["first_error_step"] >= 0 for r in rows)
                writer.add_rows(rows)
                bar.update(len(rows))
        seconds = time.perf_counter() - start
        meta = {"world": cfg.world, "source": world.source(), "parameters": world.model_dump(mode="json"),
                "seed": cfg.seed, "split": split, "rows": cfg.n, "rows_with_error": with_error,
                "seconds": round(seconds, 3)}
        (staging / WORLD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return GenerateResult(cfg.n, with_error, seconds, out, split)
