"""Label savings of the selection strategies, measured strictly: the product's own recipe and rule on cached
backbone outputs, every learner trained to the same stopping rule, dense budgets, log-label interpolation,
per-seed ratios with 95% intervals.

    python -m bench.selection_lab extract --world configs/worlds/arith-rare.yaml    # once per world (20k + 1k)
    python -m bench.label_savings run --world arith arith-hard arith-rare arith-mid --seeds 0 1 2 3 4
    python -m bench.label_savings report [--plot bench/results/label_savings.png]
    python -m bench.label_savings summary          # the savings ratios, one line per world

Per (world, strategy, seed) a learner starts from the shipped PRM's heads and buys labels in rounds up to
each cumulative budget (percent of the 20,000-row pool): the strategy picks the round's rows among the
unlabelled ones with the current heads, the verifier (18% wrong answers, seeded) labels them, and the heads
train on every label so far with `actprm train`'s default recipe (TrainConfig(): balanced error weight,
prior-bias start, a 20% held-out slice that stops training, calibrates the heads and chooses the decision
threshold), continuing from the last round as the loop does. Every budget of every learner, the full pool
included, ends by the same stopping rule. F1 is ProcessBench F1 on the world's 1,000-row eval set at the
checkpoint's decision threshold (what `score` and `filter` use), and at 0.5.

Strategies: `actprm` (the default rule on calibrated probabilities, 10% exploration, the rest of the budget
by entropy when the rule marks fewer), `actprm-paper` (the paper's rule, 0.95 / 0.005 on the raw
probabilities at 0.5, ranked by entropy past the budget, nothing else), `entropy`, `bald` (top-k) and
`random`. Budgets above --strategy-max run only the random learners (the reference up to the full pool).
Results: one JSON line per (world, strategy, seed, budget) in --results; a rerun skips finished learners.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from actprm import uncertainty
from actprm.calibration import rule_constants
from actprm.config import LoopConfig, TrainConfig
from actprm.curves import labels_to_reach, mean_interval, row_stats
from actprm.features import cached_examples, train_heads_cached
from actprm.metrics import processbench_scores
from actprm.selection import actprm_selection
from actprm.trainer import split_holdout
from bench.label_efficiency_cached import CachedLearner
from bench.results import append, read_results
from bench.selection_lab import WORK, load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "label_savings.jsonl"
BUDGETS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 40, 50, 70, 100]
STRATEGIES = ["actprm", "actprm-paper", "entropy", "bald", "random"]
#: ablations run on request (--strategies): the default rule without its exploration share, and with a random
#: 10% of every budget whether or not the rule runs dry
ABLATIONS = ["actprm-explore0", "actprm-explore10"]
RARE_WORLDS = ("arith-hard", "arith-rare")


@torch.no_grad()
def probs_of(heads, x: torch.Tensor, calibrated: bool = True) -> np.ndarray:
    """The heads' probabilities (S, K), through their calibration unless told otherwise."""
    cal = heads.calibration
    if not calibrated:
        heads.calibration = None
    try:
        return torch.sigmoid(heads(x)).numpy()
    finally:
        heads.calibration = cal


def f1_at(heads, ev, truth: np.ndarray, threshold: float) -> dict:
    st = row_stats(probs_of(heads, ev.x), ev.offsets, threshold=threshold)
    s = processbench_scores(truth, st["pred_first_error"])
    return {"f1": s["f1"], "error_acc": s["error_acc"], "correct_acc": s["correct_acc"]}


class Learner(CachedLearner):
    def __init__(self, strategy: str, seed: int, pool, truth: np.ndarray, wrong_rate: float):
        super().__init__(strategy, seed, pool, wrong_rate)
        self.pool, self.truth = pool, truth
        self.keys = np.array([uncertainty.random_score(i, seed) for i in pool.ids])
        self.last_share: float | None = None

    def rule(self) -> tuple[dict, dict]:
        """The default rule's row statistics of the whole pool under the current heads, and its settings."""
        loop = LoopConfig()
        threshold, spread = rule_constants(self.heads.calibration)
        st = row_stats(probs_of(self.heads, self.pool.x), self.pool.offsets, delta_pred=loop.delta_pred,
                       delta_std=loop.delta_std, threshold=threshold, spread_scale=spread)
        return st, {"threshold": threshold, "spread_scale": spread, "explore": loop.explore}

    def select(self, k: int, round_index: int) -> np.ndarray:
        cand = np.flatnonzero(~self.labelled)
        k = min(k, len(cand))
        if self.strategy == "random":
            return cand[np.argsort(-self.keys[cand], kind="stable")[:k]]
        if self.strategy == "actprm-paper":  # the paper's rule on the raw probabilities, at 0.5
            st = row_stats(probs_of(self.heads, self.pool.x, calibrated=False), self.pool.offsets,
                           delta_pred=uncertainty.PAPER_DELTA_PRED, delta_std=uncertainty.PAPER_DELTA_STD)
            unc = cand[st["uncertain"][cand]]
            return unc[np.argsort(-st["entropy"][unc], kind="stable")[:k]]
        st, rule = self.rule()
        self.last_share = float(st["uncertain"][cand].mean())
        if self.strategy in ("actprm", "actprm-explore0"):
            ids = [self.pool.ids[i] for i in cand]
            explore = rule["explore"] if self.strategy == "actprm" else 0.0
            mask = actprm_selection(ids, np.ones(len(cand), dtype=bool), st["uncertain"][cand], st["entropy"][cand],
                                    k, explore, self.seed * 7919 + round_index)
            return cand[mask]
        if self.strategy == "actprm-explore10":  # ceil(10%) of every budget at random, the rest by the rule + fill
            n_explore = math.ceil(0.1 * k)
            ids = [self.pool.ids[i] for i in cand]
            mask = actprm_selection(ids, np.ones(len(cand), dtype=bool), st["uncertain"][cand], st["entropy"][cand],
                                    k - n_explore, 0.0, 0)
            rest = np.flatnonzero(~mask)
            keys = np.array([uncertainty.random_score(ids[i], self.seed * 7919 + round_index) for i in rest])
            mask[rest[np.argsort(-keys, kind="stable")[:n_explore]]] = True
            return cand[mask]
        return cand[np.argsort(-st[self.strategy][cand], kind="stable")[:k]]

    def buy(self, pick: np.ndarray) -> None:
        self.labelled[pick] = True
        self.order.extend(int(i) for i in pick)
        self.labels.extend(self.verifier.answer(self.pool.ids[i], int(self.truth[i]), int(self.pool.n_steps[i]), 0)
                           for i in pick)

    def train(self, round_index: int):
        rows = [{"id": self.pool.ids[i], "i": i, "label": lab} for i, lab in zip(self.order, self.labels)]
        cfg = TrainConfig(device="cpu", seed=self.seed * 100 + round_index)  # actprm train's defaults
        train, held = split_holdout(rows, cfg.holdout)
        ex = cached_examples(self.pool, [r["i"] for r in train], [r["label"] for r in train])
        hx = cached_examples(self.pool, [r["i"] for r in held], [r["label"] for r in held]) if held else None
        result, self.opt_state = train_heads_cached(self.heads, self.pool, ex, cfg, anchor=self.anchor,
                                                    optimizer_state=self.opt_state, holdout=hx)
        return result


def run_world(args, world: str) -> None:
    pool, ptruth = load(Path(args.work), world, "pool", args.pool_rows)
    ev, etruth = load(Path(args.work), world, "eval", args.eval_rows)
    truth = np.array(ptruth["first_error_step"])
    e_truth = np.array(etruth["first_error_step"])
    N = len(pool)
    done = {(r["strategy"], r["seed"]) for r in read_results(args.results)
            if r["world"] == world and r["pool_rows"] == N and r.get("last")}
    for seed in args.seeds:
        for strategy in args.strategies:
            if (strategy, seed) in done:
                continue
            x = Learner(strategy, seed, pool, truth, args.wrong_rate)
            budgets = [b for b in args.budgets if strategy == "random" or b <= args.strategy_max]
            start = time.perf_counter()
            for r, budget in enumerate(budgets, start=1):
                total = round(N * budget / 100)
                t0 = time.perf_counter()
                pick = x.select(total - int(x.labelled.sum()), r)
                x.buy(pick)
                select_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                res = x.train(r)
                train_s = time.perf_counter() - t0
                threshold = rule_constants(x.heads.calibration)[0]
                own = f1_at(x.heads, ev, e_truth, threshold)
                half = f1_at(x.heads, ev, e_truth, 0.5)
                line = {"world": world, "strategy": strategy, "seed": seed, "budget_pct": budget, "pool_rows": N,
                        "eval_rows": len(ev), "labels": int(x.labelled.sum()), "budget_rows": total,
                        "true_error_rows": int((truth[x.labelled] >= 0).sum()),
                        "f1": own["f1"], "error_acc": own["error_acc"], "correct_acc": own["correct_acc"],
                        "f1_at_05": half["f1"], "threshold": threshold,
                        "uncertain_share_before": x.last_share, "epochs": res.epochs,
                        "best_epoch": (res.stopping or {}).get("best_epoch"), "error_weight": res.error_weight,
                        "select_s": round(select_s, 2), "train_s": round(train_s, 2),
                        "last": r == len(budgets)}
                if strategy in ("actprm", "random") and x.labelled.sum() < N:  # the rule's share after training
                    st, _ = x.rule()
                    line["uncertain_share_after"] = float(st["uncertain"][~x.labelled].mean())
                append(args.results, line)
            print(f"{world} {strategy} seed {seed}: F1 {line['f1']:.3f} at {line['labels']} labels, "
                  f"{time.perf_counter() - start:.0f}s", flush=True)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    for world in args.world:
        run_world(args, world)


# --------------------------------------------------------------------------- report


def curves(rows: list[dict], world: str, strategy: str, key: str = "f1") -> dict[int, tuple[list, list]]:
    """seed -> (labels, F1) over budgets."""
    out: dict[int, dict[float, dict]] = {}
    for r in rows:
        if r["world"] == world and r["strategy"] == strategy:
            out.setdefault(r["seed"], {})[r["budget_pct"]] = r
    return {s: ([v[b]["labels"] for b in sorted(v)], [v[b][key] for b in sorted(v)]) for s, v in out.items()}


def fmt(m: float, h: float) -> str:
    return f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f}"


def report(args) -> str:
    rows = latest_rows(args)  # a rerun's line supersedes an interrupted run's
    out = []
    for world in [w for w in args.world if any(r["world"] == w for r in rows)]:
        mine = [r for r in rows if r["world"] == world]
        strategies = [s for s in STRATEGIES + ABLATIONS if any(r["strategy"] == s for r in mine)]
        budgets = sorted({r["budget_pct"] for r in mine})
        err_share = float(np.mean([r["true_error_rows"] / r["labels"] for r in mine
                                   if r["strategy"] == "random" and r["budget_pct"] == 100])) if any(
            r["strategy"] == "random" and r["budget_pct"] == 100 for r in mine) else float("nan")
        out.append(f"\n### {world} (pool {args.pool_rows:,}; {err_share:.0%} of its rows hold a mistake)\n")
        out.append("F1 at the checkpoint's threshold, mean ± 95% half-width over seeds (n):\n")
        out.append("| strategy | " + " | ".join(f"{b:g}%" for b in budgets) + " |")
        out.append("|---|" + "---|" * len(budgets))
        for s in strategies:
            cells = []
            for b in budgets:
                v = [r["f1"] for r in mine if r["strategy"] == s and r["budget_pct"] == b]
                cells.append(f"{fmt(*mean_interval(v))} ({len(v)})" if v else "-")
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        full = [r["f1"] for r in mine if r["strategy"] == "random" and r["budget_pct"] == 100]
        if not full:
            continue
        ref = float(np.mean(full))
        out.append(f"\nfull-pool F1 (random at 100%, same stopping rule): {fmt(*mean_interval(full))} "
                   f"({len(full)} seeds); at 0.5: "
                   f"{np.mean([r['f1_at_05'] for r in mine if r['strategy'] == 'random' and r['budget_pct'] == 100]):.3f}")
        rc = curves(mine, world, "random")
        for s in strategies:
            if s == "random":
                continue
            sc = curves(mine, world, s)
            for name, target in (("90% of full", 0.9 * ref), ("full − 0.02", ref - 0.02)):
                per_seed, reached = [], 0
                for seed in sorted(set(rc) & set(sc)):
                    a = labels_to_reach(*rc[seed], target, log=True)
                    b = labels_to_reach(*sc[seed], target, log=True)
                    if a is not None and b is not None:
                        per_seed.append(a / b)
                        reached += 1
                m, h = mean_interval(per_seed) if per_seed else (float("nan"), float("nan"))
                gm = float(np.exp(np.mean(np.log(per_seed)))) if per_seed else float("nan")
                out.append(f"- {s} vs random at {name} (F1 {target:.3f}): savings ratio per seed {fmt(m, h)} "
                           f"(geometric mean {gm:.2f}; {reached}/{len(set(rc) & set(sc))} seeds reach it within "
                           f"{max(budgets if s == 'random' else [b for b in budgets if b <= args.strategy_max]):g}%"
                           f"; ratios {' '.join(f'{v:.2f}' for v in per_seed)})")
        # paired differences to random and entropy at budgets <= 30%
        for base in ("random", "entropy"):
            if "actprm" not in strategies or base not in strategies:
                continue
            cells = []
            for b in [b for b in budgets if b <= 30]:
                d = []
                for seed in sorted({r["seed"] for r in mine}):
                    a = [r["f1"] for r in mine if r["strategy"] == "actprm" and r["seed"] == seed and r["budget_pct"] == b]
                    c = [r["f1"] for r in mine if r["strategy"] == base and r["seed"] == seed and r["budget_pct"] == b]
                    if a and c:
                        d.append(a[0] - c[0])
                if d:
                    cells.append(f"{b:g}%: {fmt(*mean_interval(d))}")
            out.append(f"- actprm − {base}, F1 per seed: " + "; ".join(cells))
        for s in ("actprm", "actprm-paper"):
            sub = [r for r in mine if r["strategy"] == s]
            if not sub:
                continue
            spent = [r["labels"] / r["budget_rows"] for r in sub if r["budget_rows"]]
            at5 = [r["f1"] for r in sub if r["budget_pct"] == 5]
            shares = {b: np.mean([r["uncertain_share_before"] for r in sub if r["budget_pct"] == b
                                  and r.get("uncertain_share_before") is not None]) for b in budgets
                      if any(r["budget_pct"] == b and r.get("uncertain_share_before") is not None for r in sub)}
            out.append(f"- {s}: labels bought / budget, lowest over rounds and seeds {min(spent):.2f}; F1 at 5%: "
                       f"min over seeds {min(at5) if at5 else float('nan'):.3f}"
                       + ("; the rule's uncertain share of the unlabelled pool before each round "
                          + " ".join(f"{b:g}%:{v:.2f}" for b, v in shares.items()) if shares else ""))
        err = {s: np.mean([r["true_error_rows"] / r["labels"] for r in mine if r["strategy"] == s
                           and r["budget_pct"] == 10]) for s in strategies
               if any(r["strategy"] == s and r["budget_pct"] == 10 for r in mine)}
        out.append("- share of bought rows holding a mistake at 10%: " + ", ".join(f"{s} {v:.2f}" for s, v in err.items()))
    text = "\n".join(out)
    print(text)
    if args.plot and rows:
        plot(rows, args)
    return text


def latest_rows(args) -> list[dict]:
    latest: dict[tuple, dict] = {}
    for r in read_results(args.results):
        if r["pool_rows"] == args.pool_rows and (r["strategy"] == "random" or r["budget_pct"] <= args.strategy_max):
            latest[(r["world"], r["strategy"], r["seed"], r["budget_pct"])] = r
    return list(latest.values())


def seed_ratios(mine: list[dict], world: str, strategy: str, target: float) -> list[float | None]:
    rc, sc = curves(mine, world, "random"), curves(mine, world, strategy)
    out = []
    for seed in sorted(set(rc) & set(sc)):
        a = labels_to_reach(*rc[seed], target, log=True)
        b = labels_to_reach(*sc[seed], target, log=True)
        out.append(None if a is None or b is None else a / b)
    return out


def summary(args) -> None:
    """One table: per world, the full-pool F1 and each strategy's savings ratio at 90% of it (per seed mean ±
    95% half-width, geometric mean, seeds reaching it within --strategy-max)."""
    rows = latest_rows(args)
    shown = [s for s in args.strategies if s != "random"]
    print("| world | rows with a mistake | full-pool F1 (random, 100%) | " + " | ".join(shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for world in args.world:
        mine = [r for r in rows if r["world"] == world]
        full = [r["f1"] for r in mine if r["strategy"] == "random" and r["budget_pct"] == 100]
        if not full:
            continue
        err = np.mean([r["true_error_rows"] / r["labels"] for r in mine
                       if r["strategy"] == "random" and r["budget_pct"] == 100])
        cells = []
        for s in shown:
            ratios = seed_ratios(mine, world, s, 0.9 * float(np.mean(full)))
            ok = [v for v in ratios if v is not None]
            if not ok:
                cells.append(f"not reached (0/{len(ratios)})")
                continue
            m, h = mean_interval(ok)
            cells.append(f"{fmt(m, h)} (geo {np.exp(np.mean(np.log(ok))):.2f}; {len(ok)}/{len(ratios)})")
        print(f"| {world} | {err:.0%} | {fmt(*mean_interval(full))} ({len(full)}) | " + " | ".join(cells) + " |")


def plot(rows: list[dict], args) -> None:
    from actprm.plots import pyplot, save_figure

    plt = pyplot()
    worlds = [w for w in args.world if any(r["world"] == w for r in rows)]
    cols = 2 if len(worlds) > 2 else len(worlds)
    nrows = -(-len(worlds) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.4 * cols, 4.4 * nrows), squeeze=False)
    for ax in axes.flat[len(worlds):]:
        ax.axis("off")
    for ax, world in zip(axes.flat, worlds):
        for s in STRATEGIES:  # the ablations are in the report's tables
            c = curves(rows, world, s)
            if not c:
                continue
            budgets = sorted({r["budget_pct"] for r in rows if r["world"] == world and r["strategy"] == s})
            at = [[r for r in rows if r["world"] == world and r["strategy"] == s and r["budget_pct"] == b]
                  for b in budgets]
            x = [np.mean([r["labels"] for r in a]) for a in at]
            f = [np.array([r["f1"] for r in a]) for a in at]
            m = np.array([v.mean() for v in f])
            ax.errorbar(x, m, yerr=[m - [v.min() for v in f], [v.max() for v in f] - m], marker="o", ms=3,
                        capsize=2, label=f"{s} ({len(c)} seeds)")
        ax.set(xscale="log", xlabel="labels bought (log)", ylabel="eval F1 (checkpoint threshold)",
               title=world, ylim=(-0.02, 1.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, args.plot)
    print(f"plot: {args.plot}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "report", "summary"])
    p.add_argument("--world", nargs="+", default=["arith", "arith-hard", "arith-rare", "arith-mid"])
    p.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES + ABLATIONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS)
    p.add_argument("--strategy-max", type=float, default=50.0, help="budgets above: only the random learners")
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--wrong-rate", type=float, default=0.18)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", default=str(REPO / "bench" / "results" / "label_savings.png"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    {"run": run, "report": report, "summary": summary}[args.mode](args)


if __name__ == "__main__":
    main()
