"""The selection lab on cached backbone outputs (actprm.features): extract once, then rounds in seconds.

    python -m bench.selection_lab extract --world configs/worlds/arith.yaml --pool-rows 20000 --eval-rows 1000
    python -m bench.selection_lab extract --world configs/worlds/arith-hard.yaml ...

`extract` writes the shipped PRM's head inputs for a world pool (generate seed 1) and an eval set (seed 2,
about half with an error) to --work/<world>-pool-N.safetensors and <world>-eval-N.safetensors, with the
rows' ground truth (first_error_step, error kind) beside them as JSON. Every later experiment (the
regime check, the options of items 3-4, the study in bench/label_efficiency_cached.py) reads these.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from actprm.features import HeadInputs, extract_head_inputs
from actprm.generate import load_world
from actprm.model import default_prm_path, load_prm
from actprm.world.arith import Generator

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "selection_lab"


def world_name(path: str | None) -> str:
    return Path(path).stem if path else "arith"


def rows_of(world_path: str | None, split: str, n: int, seed: int) -> list[dict]:
    return list(Generator(load_world(world_path), seed=seed).rows(0, n, split))


def paths(work: Path, world: str, kind: str, n: int) -> tuple[Path, Path]:
    stem = work / f"{world}-{kind}-{n}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def extract(args: argparse.Namespace) -> None:
    model, tok = load_prm(str(default_prm_path()))
    name = world_name(args.world)
    for kind, split, n, seed in (("eval", "eval", args.eval_rows, 2), ("pool", "train", args.pool_rows, 1)):
        out, truth = paths(Path(args.work), name, kind, n)
        if out.is_file() and not args.overwrite:
            print(f"{out}: exists", flush=True)
            continue
        t0 = time.perf_counter()
        rows = rows_of(args.world, split, n, seed)
        cache = extract_head_inputs(model, tok, rows, batch_tokens=args.batch_tokens, progress=True)
        cache.save(out)
        truth.write_text(json.dumps({"ids": [r["id"] for r in rows],
                                     "first_error_step": [r["first_error_step"] for r in rows],
                                     "meta": [r["meta"] for r in rows]}))
        print(f"{out}: {n} rows, {len(cache.x)} steps, {time.perf_counter() - t0:.0f}s", flush=True)


def load(work: Path, world: str, kind: str, n: int) -> tuple[HeadInputs, dict]:
    out, truth = paths(work, world, kind, n)
    return HeadInputs.load(out), json.loads(truth.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["extract"])
    p.add_argument("--world", default=None, help="world YAML (default: the built-in default world)")
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"extract": extract}[args.mode](args)


if __name__ == "__main__":
    main()
