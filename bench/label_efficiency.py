"""Label efficiency: how many labels ActPRM selection saves, against random and entropy selection.

    python -m bench.label_efficiency [--pool-rows 5000] [--eval-rows 1000] [--seeds 0 1 2] \\
        [--budgets 5 10 20 30 50 100] [--strategies actprm random entropy] [--config configs/loop/label_efficiency.yaml]
    python -m bench.label_efficiency stream --rows 100000 [--chunk-rows 2000] [--eval-every 10] [--target-rate 0.1]

Pool mode: a world pool (`--pool-rows`, generate seed 1) and eval set (`--eval-rows`, seed 2, about half
with an error) under --work; for each strategy and seed, one `rounds` loop (pipelines/loop.py)
whose round budgets step through the budgets (percent of the pool, cumulative: 5, 10, 20, ... -> rounds
of 5%, 5%, 10%, ...), each round training from the last checkpoint with the fixed recipe of --config
(its `train:` block; `train_on: all`) and evaluating ProcessBench F1 on the eval set. The seed sets the
random order, the training seed and the verifier's answers; pool and eval set stay fixed.

Every (strategy, budget, seed) result is appended to --results (JSON lines) as soon as its round is
evaluated; a rerun skips the finished ones (and the loops resume from their run directories under
--work). Printed: mean ± std of mean_f1 per strategy and budget, and per strategy the smallest budget
whose mean F1 is within 0.01 of the full-pool F1 (the mean at 100% over every strategy and seed: at
100% every strategy has labelled the whole pool); plotted: F1 against budget (--plot).

Stream mode: a world corpus of --rows (generate seed 3) read once in chunks (ActPRM's Algorithm 1,
`mode: stream`): the share of rows the rule sends to the judge, per chunk and in all, and the final F1.
With --target-rate R the rule's deltas are chosen on the first chunk (scored by the starting model) for
about R of it, then held: the later chunks' rates show how the model's uncertainty moves as it learns.
--rounds N stops after N chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from actprm.config import GenerateConfig, LoopConfig, load_config
from bench.results import append, read_results
from pipelines import generate
from pipelines import loop as active_loop
from pipelines.ray_session import init_ray

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "label_efficiency.jsonl"


def world(work: Path, name: str, n: int, seed: int, eval_set: bool = False) -> Path:
    path = work / "world" / f"{name}-{n}"
    if not path.is_dir():
        generate.run(GenerateConfig(n=n, seed=seed, eval_set=eval_set, output=str(path)), progress=False)
    return path


def schedule(budgets: list[float], pool_rows: int) -> list[int]:
    """Cumulative budgets in percent -> labels bought per round (each round ends exactly on a budget)."""
    totals = [round(pool_rows * b / 100) for b in budgets]
    return [b - a for a, b in zip([0, *totals], totals)]


def base_config(path: str) -> LoopConfig:
    return load_config(LoopConfig, path)


def pool_mode(args: argparse.Namespace) -> None:
    work = Path(args.work)
    pool = world(work, "pool", args.pool_rows, 1)
    evals = world(work, "eval", args.eval_rows, 2, eval_set=True)
    budgets = sorted(args.budgets)
    steps = schedule(budgets, args.pool_rows)
    base = base_config(args.config)
    done = {(r["strategy"], r["budget_pct"], r["seed"]) for r in read_results(args.results)
            if r.get("kind") == "pool" and r["pool_rows"] == args.pool_rows and r["eval_rows"] == args.eval_rows}
    init_ray(args.address)
    scorers = active_loop.ScoringPool(args.actors, base.device, base.batch_tokens, base.max_length, base.batch_rows)
    try:
        for seed in args.seeds:
            for strategy in args.strategies:
                if all((strategy, b, seed) in done for b in budgets):
                    continue
                cfg = base.model_copy(update={
                    "mode": "rounds", "pool": [str(pool)], "eval": [str(evals)], "strategy": strategy,
                    "output": str(work / "runs" / f"{strategy}-{args.pool_rows}-s{seed}-b{'-'.join(f'{b:g}' for b in budgets)}"), "round_labels": steps,
                    "rounds": len(steps), "label_budget": None, "eval_every": 1, "seed": seed, "train_on": "all",
                    "train": base.train.model_copy(update={"seed": seed}),
                    "judge": base.judge_config().model_copy(update={"seed": seed})})
                start = time.perf_counter()
                result = active_loop.run(cfg, progress=not args.no_progress, pool=scorers)
                for line in result.lines[1:]:
                    budget = budgets[line["round"] - 1]
                    if (strategy, budget, seed) in done or line["mean_f1"] is None:
                        continue
                    append(args.results, {
                        "kind": "pool", "strategy": strategy, "budget_pct": budget, "seed": seed,
                        "pool_rows": args.pool_rows, "eval_rows": args.eval_rows, "labels": line["labels_used"],
                        "mean_f1": line["mean_f1"], "error_acc": line["error_acc"], "correct_acc": line["correct_acc"],
                        "step_auroc": line["step_auroc"], "uncertain_rate": line["uncertain_rate"],
                        "train": cfg.train.model_dump(mode="json", include={"backbone", "top_layers", "lr", "head_lr",
                                                                             "epochs", "batch_size", "anchor_lambda"}),
                        "model": cfg.model, "run_seconds": round(time.perf_counter() - start, 1)})
                    done.add((strategy, budget, seed))
                print(result.summary_line(), flush=True)
    finally:
        scorers.close()
    report(args)


def report(args: argparse.Namespace) -> None:
    rows = [r for r in read_results(args.results) if r.get("kind") == "pool" and r["pool_rows"] == args.pool_rows
            and r["eval_rows"] == args.eval_rows]
    budgets = sorted({r["budget_pct"] for r in rows})
    strategies = [s for s in args.strategies if any(r["strategy"] == s for r in rows)]

    def f1s(strategy: str, budget: float) -> list[float]:
        return [r["mean_f1"] for r in rows if r["strategy"] == strategy and r["budget_pct"] == budget]

    print(f"\nlabel efficiency: pool {args.pool_rows}, eval {args.eval_rows}; mean F1 ± std over seeds (n)")
    print(f"{'strategy':<10}" + "".join(f"{f'{b:g}%':>18}" for b in budgets))
    for s in strategies:
        cells = []
        for b in budgets:
            v = f1s(s, b)
            cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} ({len(v)})" if v else "-")
        print(f"{s:<10}" + "".join(f"{c:>18}" for c in cells))
    full = [f for s in strategies for f in f1s(s, 100)]
    if full:
        ref = float(np.mean(full))
        print(f"full-pool F1 (every strategy and seed at 100%): {ref:.3f}")
        for s in strategies:
            reached = [b for b in budgets if f1s(s, b) and np.mean(f1s(s, b)) >= ref - 0.01]
            print(f"  {s}: reaches it within 0.01 at {f'{reached[0]:g}%' if reached else 'no budget measured'}")
    if args.plot and rows:
        from actprm.plots import pyplot, save_figure

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for s in strategies:
            shown = [b for b in budgets if f1s(s, b)]
            ax.errorbar(shown, [np.mean(f1s(s, b)) for b in shown], yerr=[np.std(f1s(s, b)) for b in shown],
                        marker="o", capsize=3, label=s)
        ax.set(xlabel="labels (% of the pool)", ylabel="eval mean F1", title=f"label efficiency, pool {args.pool_rows}")
        ax.grid(alpha=0.3)
        ax.legend()
        save_figure(fig, args.plot)
        print(f"plot: {args.plot}")


def stream_mode(args: argparse.Namespace) -> None:
    work = Path(args.work)
    corpus = world(work, "stream", args.rows, 3)
    evals = world(work, "eval", args.eval_rows, 2, eval_set=True)
    base = base_config(args.config)
    cfg = base.model_copy(update={
        "mode": "stream", "pool": [str(corpus)], "eval": [str(evals)], "strategy": "actprm",
        "output": str(work / "runs" / f"stream-{Path(args.config).stem}-{args.rows}-c{args.chunk_rows}"
                                      f"-t{args.target_rate}-n{args.rounds}"),
        "chunk_rows": args.chunk_rows, "rounds": args.rounds, "label_budget": None, "eval_every": args.eval_every,
        "target_rate": args.target_rate})
    init_ray(args.address)
    start = time.perf_counter()
    result = active_loop.run(cfg, progress=not args.no_progress)
    last = result.lines[-1]
    rows_seen = sum(x["rows_considered"] for x in result.lines)
    calibration = json.loads((result.output / "state.json").read_text()).get("calibration")
    row = {"kind": "stream", "config": Path(args.config).name, "rows": args.rows, "chunk_rows": args.chunk_rows,
           "eval_rows": args.eval_rows,
           "target_rate": args.target_rate, "max_chunks": args.rounds, "calibration": calibration,
           "rows_seen": rows_seen, "labels": last["labels_used"],
           "selection_rate": last["labels_used"] / rows_seen if rows_seen else None,
           "start_f1": result.lines[0]["mean_f1"], "mean_f1": last["mean_f1"], "error_acc": last["error_acc"],
           "correct_acc": last["correct_acc"], "chunks": result.rounds,
           "rate_by_chunk": [x["selection_rate"] for x in result.lines[1:]],
           "f1_by_chunk": [x["mean_f1"] for x in result.lines[1:]],
           "train": cfg.train.model_dump(mode="json", include={"backbone", "lr", "head_lr", "batch_size", "epochs",
                                                                "anchor_lambda"}),
           "seconds": round(time.perf_counter() - start, 1)}
    if not any(r.get("kind") == "stream" and r["rows"] == args.rows and r["chunk_rows"] == args.chunk_rows
               and r.get("target_rate") == args.target_rate and r.get("max_chunks") == args.rounds
               and r.get("config") == Path(args.config).name
               for r in read_results(args.results)):
        append(args.results, row)
    print(result.summary_line())
    print(f"stream: {rows_seen} rows, {row['labels']} sent to the judge (selection rate "
          f"{row['selection_rate']:.1%}), F1 {row['start_f1']} -> {row['mean_f1']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=["pool", "stream", "report"], default="pool")
    p.add_argument("--config", default=None, help="the loop settings and the fixed training recipe (train:); "
                   "default: configs/loop/label_efficiency.yaml (pool), configs/loop/stream.yaml (stream)")
    p.add_argument("--pool-rows", type=int, default=5000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 30, 50, 100], help="percent of the pool")
    p.add_argument("--strategies", nargs="+", default=["actprm", "random", "entropy"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", type=int, default=100_000, help="stream: corpus rows")
    p.add_argument("--chunk-rows", type=int, default=2000, help="stream: rows per chunk")
    p.add_argument("--eval-every", type=int, default=10, help="stream: evaluate every N chunks (and the last)")
    p.add_argument("--target-rate", type=float, default=None,
                   help="stream: choose the rule's deltas on the first chunk for about this share, then hold them")
    p.add_argument("--rounds", type=int, default=None, help="stream: stop after N chunks (default: the corpus)")
    p.add_argument("--work", default=str(REPO / "runs" / "label_efficiency"), help="worlds and loop run directories")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", default=str(REPO / "bench" / "results" / "label_efficiency.png"))
    p.add_argument("--actors", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the driver")
    p.add_argument("--address", default=None)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.config = args.config or str(REPO / "configs" / "loop" / ("stream.yaml" if args.mode == "stream"
                                                                  else "label_efficiency.yaml"))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # as the CLI: our bars and lines only
    torch.set_num_threads(args.threads)
    {"pool": pool_mode, "stream": stream_mode, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
