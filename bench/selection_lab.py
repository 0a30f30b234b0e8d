"""The selection lab on cached backbone outputs (actprm.features): extract once, then rounds in seconds.

    python -m bench.selection_lab extract --world configs/worlds/arith.yaml --pool-rows 20000 --eval-rows 1000
    python -m bench.selection_lab extract --world configs/worlds/arith-hard.yaml ...
    python -m bench.selection_lab round-timing --pool-rows 20000 --labels 2000

`extract` writes the shipped PRM's head inputs for a world pool (generate seed 1) and an eval set (seed 2,
about half with an error) to --work/<world>-pool-N.safetensors and <world>-eval-N.safetensors, with the
rows' ground truth (first_error_step, error kind) beside them as JSON. Every later experiment (the
regime check, the options of items 3-4, the study in bench/label_efficiency_cached.py) reads these.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from actprm.features import HeadInputs, extract_head_inputs
from actprm.model import default_prm_path, load_prm
from actprm.world.arith import Generator, load_world

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


def round_timing(args: argparse.Namespace) -> None:
    """One round cached vs uncached: score the pool + train 8 epochs (the label-efficiency recipe) on
    --labels rows. The uncached round is measured on --uncached-rows pool rows and --uncached-labels labels
    and scaled linearly (it is linear in both)."""
    from actprm.config import TrainConfig
    from actprm.features import cached_examples, score_cached, train_heads_cached
    from actprm.labels import LabelCounts
    from actprm.scoring import TrajectoryEncoder, score_trajectories
    from actprm.trainer import build_examples, train_round

    name = world_name(args.world)
    pool, truth = load(Path(args.work), name, "pool", args.pool_rows)
    model, tok = load_prm(str(default_prm_path()))
    cfg = TrainConfig(backbone="frozen", head_lr=1e-2, epochs=8, batch_size=16, warmup_steps=5, anchor_lambda=0.0,
                      device="cpu")
    anchor = {k: v.detach().clone() for k, v in model.heads.state_dict().items()}
    labels = truth["first_error_step"]
    out = {"pool_rows": len(pool), "labels": args.labels, "threads": args.threads}
    t0 = time.perf_counter()
    score_cached(model.heads, pool)
    out["cached_score_s"] = time.perf_counter() - t0


    heads = copy.deepcopy(model.heads)
    t0 = time.perf_counter()
    train_heads_cached(heads, pool, cached_examples(pool, range(args.labels), labels[: args.labels]), cfg, anchor=anchor)
    out["cached_train_s"] = time.perf_counter() - t0
    rows = rows_of(args.world, "train", max(args.uncached_rows, args.uncached_labels), 1)
    t0 = time.perf_counter()
    score_trajectories(model, tok, [r["problem"] for r in rows[: args.uncached_rows]],
                       [r["steps"] for r in rows[: args.uncached_rows]], batch_tokens=2048)
    out["uncached_score_s_measured"] = time.perf_counter() - t0
    out["uncached_score_s"] = out["uncached_score_s_measured"] * len(pool) / args.uncached_rows
    labelled = [{"problem": r["problem"], "steps": r["steps"], "label_first_error": r["first_error_step"],
                 "label_weight": 1.0} for r in rows[: args.uncached_labels]]
    full = copy.deepcopy(model)
    examples = build_examples(labelled, TrajectoryEncoder(tok, max_length=full.max_length), LabelCounts())
    t0 = time.perf_counter()
    train_round(full, tok, examples, cfg, device=torch.device("cpu"), anchor=anchor)
    out["uncached_train_s_measured"] = time.perf_counter() - t0
    out["uncached_train_s"] = out["uncached_train_s_measured"] * args.labels / args.uncached_labels
    out["cached_round_s"] = out["cached_score_s"] + out["cached_train_s"]
    out["uncached_round_s"] = out["uncached_score_s"] + out["uncached_train_s"]
    out["speedup"] = out["uncached_round_s"] / out["cached_round_s"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}), flush=True)


def load(work: Path, world: str, kind: str, n: int) -> tuple[HeadInputs, dict]:
    out, truth = paths(work, world, kind, n)
    return HeadInputs.load(out), json.loads(truth.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["extract", "round-timing"])
    p.add_argument("--world", default=None, help="world YAML (default: the built-in default world)")
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--labels", type=int, default=2000, help="round-timing: labels of the round")
    p.add_argument("--uncached-rows", type=int, default=1000, help="round-timing: pool rows scored uncached")
    p.add_argument("--uncached-labels", type=int, default=200, help="round-timing: labels trained uncached")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"extract": extract, "round-timing": round_timing}[args.mode](args)


if __name__ == "__main__":
    main()
