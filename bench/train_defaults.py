"""`actprm train`'s defaults against hand-tuned recipes, from the same noisy labels.

    python -m bench.train_defaults cached --world arith arith-hard --labels 3000 --seeds 0 1 2
    python -m bench.train_defaults cli --world-config configs/worlds/arith.yaml --labels 3000 --seed 0

`cached` (the selection lab's caches, bench/selection_lab.py extract): per seed, --labels rows drawn at random
from the 20,000-row pool, labelled by the verifier (18% wrong answers), trained from the shipped PRM's heads
with each recipe through the same function `actprm train` runs on a frozen backbone
(actprm.features.train_heads_cached, held-out rows by actprm.trainer.split_holdout); ProcessBench F1 on the
1,000-row eval set at 0.5 and, where the recipe calibrates, at the checkpoint's decision threshold.
Recipes: `default` (TrainConfig()), `demo-recipe` (the hand-tuned recipe the demo used: 6 passes, error
weight 3, prior bias, nothing held out), `fixed-8` (8 passes, error weight 1, nothing held out), and the
default with `error_weight` 1 or 3.

`cli`: the user's path, end to end: `actprm generate` (pool --labels rows, seed 1; eval set 600 rows,
seed 2), `actprm annotate` with the verifier, `actprm train` with no recipe flag, `actprm evaluate`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from actprm.config import TrainConfig
from actprm.curves import mean_interval, row_stats
from actprm.features import cached_examples, train_heads_cached
from actprm.judge.verifier import VerifierAnnotator
from actprm.metrics import processbench_scores
from actprm.trainer import split_holdout
from bench.label_efficiency_cached import shipped_heads
from bench.results import append, read_results
from bench.selection_lab import WORK, load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "train_defaults.jsonl"
RECIPES = {
    "default": {},
    "default, error_weight 1": {"error_weight": 1.0},
    "default, error_weight 3": {"error_weight": 3.0},
    "demo-recipe": {"epochs": 6, "error_weight": 3.0, "prior_bias": True, "holdout": 0.0},
    "fixed-8": {"epochs": 8, "error_weight": 1.0, "prior_bias": False, "holdout": 0.0},
}


@torch.no_grad()
def f1(heads, ev, truth, threshold: float) -> float:
    st = row_stats(torch.sigmoid(heads(ev.x)).numpy(), ev.offsets, threshold=threshold)
    return processbench_scores(truth, st["pred_first_error"])["f1"]


def cached(args) -> None:
    torch.set_num_threads(args.threads)
    for world in args.world:
        pool, pt = load(Path(args.work), world, "pool", args.pool_rows)
        ev, et = load(Path(args.work), world, "eval", args.eval_rows)
        truth, e_truth = np.array(pt["first_error_step"]), np.array(et["first_error_step"])
        done = {(r["world"], r["recipe"], r["seed"], r["labels"]) for r in read_results(args.results)}
        for seed in args.seeds:
            verifier = VerifierAnnotator(wrong_rate=0.18, seed=seed)
            idx = np.random.default_rng(seed).choice(len(pool), args.labels, replace=False)
            rows = [{"id": pool.ids[i], "i": int(i),
                     "label": verifier.answer(pool.ids[i], int(truth[i]), int(pool.n_steps[i]), 0)} for i in idx]
            for name, kw in RECIPES.items():
                if (world, name, seed, args.labels) in done:
                    continue
                cfg = TrainConfig(device="cpu", seed=seed, **kw)
                train, held = split_holdout(rows, cfg.holdout)
                heads = shipped_heads()
                anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
                t0 = time.perf_counter()
                res, _ = train_heads_cached(
                    heads, pool, cached_examples(pool, [r["i"] for r in train], [r["label"] for r in train]), cfg,
                    anchor=anchor,
                    holdout=cached_examples(pool, [r["i"] for r in held], [r["label"] for r in held]) if held else None)
                seconds = time.perf_counter() - t0
                cal = heads.calibration
                line = {"world": world, "recipe": name, "seed": seed, "labels": args.labels,
                        "f1_at_05": f1(heads, ev, e_truth, 0.5),
                        "f1_checkpoint": f1(heads, ev, e_truth, cal["threshold"]) if cal else None,
                        "threshold": cal["threshold"] if cal else None, "epochs": res.epochs,
                        "best_epoch": (res.stopping or {}).get("best_epoch"), "error_weight": res.error_weight,
                        "seconds": round(seconds, 2)}
                append(args.results, line)
                print(json.dumps(line), flush=True)


def report(args) -> None:
    rows = read_results(args.results)
    print("| world | recipe | labels | F1 at the checkpoint's threshold | F1 at 0.5 | threshold | passes (best) |")
    print("|---|---|---|---|---|---|---|")
    for world in args.world:
        for name in RECIPES:
            mine = [r for r in rows if r["world"] == world and r["recipe"] == name and r["labels"] == args.labels]
            if not mine:
                continue
            own = [r["f1_checkpoint"] for r in mine if r["f1_checkpoint"] is not None]
            m, h = mean_interval([r["f1_at_05"] for r in mine])
            om, oh = mean_interval(own) if own else (float("nan"), float("nan"))
            thr = [r["threshold"] for r in mine if r["threshold"] is not None]
            print(f"| {world} | {name} | {args.labels} | "
                  + (f"{om:.3f} ± {oh:.3f} ({' '.join(f'{v:.3f}' for v in own)})" if own else "-")
                  + f" | {m:.3f} ± {h:.3f} ({' '.join(format(r['f1_at_05'], '.3f') for r in mine)}) | "
                  + (f"{min(thr):.2f}–{max(thr):.2f}" if thr else "-") + " | "
                  + " ".join(f"{r['epochs']}({r['best_epoch'] or '-'})" for r in mine) + " |")


def cli(args) -> None:
    """The verbs a user runs, in a temporary directory; prints their summary lines and the two F1s."""
    def actprm(*a: str) -> str:
        out = subprocess.run([sys.executable, "-m", "actprm.cli", *a, "--no-progress"], check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()
        print(out[-1], flush=True)
        return out[-1]

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        world = ["--world-config", args.world_config] if args.world_config else []
        t0 = time.perf_counter()
        actprm("generate", *world, "--n", str(args.labels), "--seed", "1", "--output", str(d / "pool"))
        actprm("generate", *world, "--n", "600", "--seed", "2", "--eval-set", "--output", str(d / "eval"))
        actprm("annotate", "--input", str(d / "pool"), "--backend", "verifier", "--seed", str(args.seed),
               "--output", str(d / "ann"))
        actprm("train", "--trajectories", str(d / "pool"), "--annotations", str(d / "ann" / "annotations"),
               "--output", str(d / "model"), "--seed", str(args.seed))
        actprm("evaluate", "--data", str(d / "eval"), "--model", str(d / "model"), "--output", str(d / "ev"))
        m = json.loads((d / "ev" / "metrics.json").read_text())
        print(json.dumps({"world": args.world_config or "arith", "labels": args.labels, "seed": args.seed,
                          "f1_at_05": m["mean_f1"], "f1_checkpoint": m["checkpoint_threshold"]["mean_f1"],
                          "threshold": m["checkpoint_threshold"]["threshold"],
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["cached", "report", "cli"])
    p.add_argument("--world", nargs="+", default=["arith", "arith-hard"])
    p.add_argument("--world-config", default=None, help="cli: the world YAML (default: the built-in world)")
    p.add_argument("--labels", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help="cli: the verifier's and the training seed")
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    {"cached": cached, "report": report, "cli": cli}[args.mode](args)


if __name__ == "__main__":
    main()
