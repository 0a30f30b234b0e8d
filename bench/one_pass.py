"""One pass over a corpus (ActPRM's Algorithm 1), the paper's comparison in one run: the same pass over the
same corpus with every row labelled (`full`), with ActPRM's selection (`actprm`), and with a random selection
of the same size (`random`: per batch, as many rows as actprm labelled in that batch, drawn at random).

    python -m bench.selection_lab extract --world configs/worlds/arith-rare.yaml    # once per world (20k + 1k)
    python -m bench.one_pass run --world arith arith-hard arith-rare arith-mid --seeds 0 1 2 3 4
    python -m bench.one_pass report [--plot bench/results/one_pass.png]

Per (world, seed): the pool's 20,000 rows in a seeded order, in mini-batches of the loop's `stream_batch`,
through `actprm.onepass.OnePass` with the loop's defaults (actprm.onepass.pass_settings: replay, learning-rate
schedule over the pass, recalibration on the window), starting from the shipped PRM's heads; the verifier
(18% wrong answers, seeded per seed) labels. F1 is ProcessBench F1 on the world's 1,000-row eval set at the
heads' decision threshold, at 10 points along the pass and after it. Results: one JSON line per (world,
strategy, seed) in --results; a rerun skips finished ones.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from actprm.calibration import rule_constants
from actprm.config import LoopConfig
from actprm.curves import mean_interval, row_stats
from actprm.judge.verifier import VerifierAnnotator
from actprm.metrics import processbench_scores
from actprm.onepass import OnePass, PassSummary, batches_of, pass_settings
from bench.label_efficiency_cached import shipped_heads
from bench.results import append, read_results
from bench.selection_lab import WORK, load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "one_pass.jsonl"
STRATEGIES = ["actprm", "random", "full"]
RARE_WORLDS = ("arith-hard", "arith-rare")


@torch.no_grad()
def f1_of(heads, ev, e_truth: np.ndarray) -> float:
    threshold = rule_constants(heads.calibration)[0]
    st = row_stats(torch.sigmoid(heads(ev.x)).numpy(), ev.offsets, threshold=threshold)
    return processbench_scores(e_truth, st["pred_first_error"])["f1"]


def loop_config(overrides: dict | None) -> LoopConfig:
    """LoopConfig with KEY=VALUE overrides (`train.head_lr` reaches into the training recipe)."""
    nested: dict = {}
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        d = nested
        for part in parents:
            d = d.setdefault(part, {})
        d[leaf] = value
    return LoopConfig(**nested)


def one_pass(strategy: str, seed: int, pool, truth: np.ndarray, ev, e_truth: np.ndarray, wrong_rate: float,
             counts: list[int] | None = None, overrides: dict | None = None, checkpoints: int = 10) -> dict:
    """One pass; `counts`: rows per batch for random (actprm's). The result line (without world)."""
    loop = loop_config(overrides)
    order = np.random.default_rng(seed).permutation(len(pool))
    n_batches = batches_of(len(pool), loop.stream_batch)
    learner = OnePass(shipped_heads(), pass_settings(loop, n_batches, strategy=strategy, seed=seed))
    verifier = VerifierAnnotator(wrong_rate=wrong_rate, seed=seed)
    along, labels, error_rows = [], 0, 0
    marks = {math.ceil(n_batches * (j + 1) / checkpoints) for j in range(checkpoints)}
    start = time.perf_counter()
    for b in range(n_batches):
        idx = order[b * loop.stream_batch:(b + 1) * loop.stream_batch]
        inputs = pool.rows(idx)

        def annotate(pos: np.ndarray) -> list[int]:
            out = []
            for p in pos:
                i = int(idx[p])
                a = verifier.answer(pool.ids[i], int(truth[i]), int(pool.n_steps[i]), 0)
                out.append(int(truth[i]) if a is None else int(a))
            return out

        rec = learner.step(inputs, annotate, count=None if counts is None else counts[b])
        labels += rec.labelled
        if b + 1 in marks:
            along.append({"batch": b + 1, "rows": int(min(len(pool), (b + 1) * loop.stream_batch)),
                          "labels": labels, "f1": f1_of(learner.heads, ev, e_truth)})
    summary = PassSummary.of(learner.records)
    error_rows = None
    return {"strategy": strategy, "seed": seed, "pool_rows": len(pool), "labels": labels,
            "label_share": labels / len(pool), "f1": along[-1]["f1"], "along": along,
            "first_tenth_rate": summary.first_tenth_rate, "last_tenth_rate": summary.last_tenth_rate,
            "counts": [r.labelled for r in learner.records], "threshold": (learner.heads.calibration or {}).get(
                "threshold"), "seconds": round(time.perf_counter() - start, 1), "error_rows": error_rows,
            "overrides": overrides or {}}


def run(args) -> None:
    torch.set_num_threads(args.threads)
    overrides = dict(kv.split("=", 1) for kv in args.set)
    for world in args.world:
        pool, ptruth = load(Path(args.work), world, "pool", args.pool_rows)
        ev, etruth = load(Path(args.work), world, "eval", args.eval_rows)
        truth, e_truth = np.array(ptruth["first_error_step"]), np.array(etruth["first_error_step"])
        have = {(r["strategy"], r["seed"]): r for r in read_results(args.results)
                if r["world"] == world and r.get("overrides", {}) == overrides and r["pool_rows"] == len(pool)}
        for seed in args.seeds:
            for strategy in args.strategies:
                if (strategy, seed) in have:
                    continue
                counts = None
                if strategy == "random":
                    if ("actprm", seed) not in have:
                        continue
                    counts = have[("actprm", seed)]["counts"]
                line = {"world": world, **one_pass(strategy, seed, pool, truth, ev, e_truth, args.wrong_rate,
                                                   counts, overrides)}
                append(args.results, line)
                have[(strategy, seed)] = line
                print(f"{world} {strategy} seed {seed}: F1 {line['f1']:.3f} with {line['labels']} labels "
                      f"({line['label_share']:.0%}); rate {line['first_tenth_rate']:.0%} -> "
                      f"{line['last_tenth_rate']:.0%}; {line['seconds']}s", flush=True)


def fmt(v: list[float], digits: int = 3) -> str:
    m, h = mean_interval(v)
    return f"{m:.{digits}f} ± {h:.{digits}f}" if not math.isnan(h) else f"{m:.{digits}f}"


def report(args) -> str:
    overrides = dict(kv.split("=", 1) for kv in args.set)
    rows = [r for r in read_results(args.results) if r.get("overrides", {}) == overrides]
    out = ["| world | strategy | seeds | labels (share of the pool) | F1 after the pass | F1 − full's | "
           "selection rate, first → last tenth |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for world in args.world:
        mine = {(r["strategy"], r["seed"]): r for r in rows if r["world"] == world}
        seeds = sorted({s for (_, s) in mine})
        full = {s: mine[("full", s)] for s in seeds if ("full", s) in mine}
        for strategy in STRATEGIES:
            got = [mine[(strategy, s)] for s in seeds if (strategy, s) in mine]
            if not got:
                continue
            diff = [r["f1"] - full[r["seed"]]["f1"] for r in got if r["seed"] in full]
            out.append(f"| {world} | {strategy} | {len(got)} | {fmt([r['labels'] for r in got], 0)} "
                       f"({np.mean([r['label_share'] for r in got]):.0%}) | {fmt([r['f1'] for r in got])} | "
                       f"{fmt(diff) if diff else '-'} | {fmt([r['first_tenth_rate'] for r in got], 2)} → "
                       f"{fmt([r['last_tenth_rate'] for r in got], 2)} |")
        paired = [(mine[("actprm", s)], mine[("random", s)], full[s]) for s in seeds
                  if ("actprm", s) in mine and ("random", s) in mine and s in full]
        if paired:
            a_vs_full = [a["f1"] - f["f1"] for a, _, f in paired]
            a_vs_rand = [a["f1"] - r["f1"] for a, r, _ in paired]
            share = [a["labels"] / f["labels"] for a, _, f in paired]
            met = np.mean(a_vs_full) >= -0.01 and np.mean(share) <= 0.5
            verdicts.append(f"- {world}: actprm − full {fmt(a_vs_full)} with {np.mean(share):.0%} of full's labels "
                            f"({'meets' if met else 'misses'} full − 0.01 at ≤ 50%); actprm − random (same labels) "
                            f"{fmt(a_vs_rand)}; selection rate falls on {sum(a['last_tenth_rate'] < a['first_tenth_rate'] for a, _, _ in paired)}/{len(paired)} seeds")
    text = "\n".join(out + [""] + verdicts)
    print(text)
    if args.plot:
        plot(rows, args)
    return text


def plot(rows: list[dict], args) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = [w for w in args.world if any(r["world"] == w for r in rows)]
    if not worlds:
        return
    fig, axes = plt.subplots(1, len(worlds), figsize=(4.2 * len(worlds), 3.4), squeeze=False)
    colors = {"actprm": "tab:blue", "random": "tab:orange", "full": "tab:gray"}
    for ax, world in zip(axes[0], worlds):
        for strategy in STRATEGIES:
            got = [r for r in rows if r["world"] == world and r["strategy"] == strategy]
            if not got:
                continue
            xs = np.mean([[a["labels"] for a in r["along"]] for r in got], axis=0)
            ys = np.array([[a["f1"] for a in r["along"]] for r in got])
            ax.plot(xs, ys.mean(0), "-o", ms=3, color=colors[strategy], label=f"{strategy} ({len(got)} seeds)")
            ax.fill_between(xs, ys.min(0), ys.max(0), color=colors[strategy], alpha=0.15)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping minor labels
        ax.set_title(world)
        ax.set_xlabel("labels bought along the pass")
        ax.set_ylabel("ProcessBench F1 (eval)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("One pass over 20,000 rows: F1 against labels (mean, band = min..max over seeds)")
    fig.tight_layout()
    fig.savefig(args.plot, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "report"])
    p.add_argument("--world", nargs="+", default=["arith-rare", "arith-hard", "arith", "arith-mid"])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--wrong-rate", type=float, default=0.18)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="LoopConfig overrides (an ablation; results kept apart)")
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", default=str(REPO / "bench" / "results" / "one_pass.png"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    {"run": run, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
