"""Label efficiency on cached backbone outputs: the selection study of a pool in minutes, not days.

    python -m bench.selection_lab extract [--world configs/worlds/arith-hard.yaml]     # once per world
    python -m bench.label_efficiency_cached run --world arith-hard --strategies actprm random entropy bald \\
        --seeds 0 1 2 3 4 [--variant NAME --error-weight 3 --prior-bias --learning-probability 0.5 ...]
    python -m bench.label_efficiency_cached report [--plot bench/results/label_efficiency_cached.png]

The loop of pipelines/active_loop.py (`rounds`, `train_on: all`) on the shipped PRM's cached head inputs
(actprm.features) instead of re-running the backbone: per cumulative budget (percent of the pool) the
current heads score the pool, the strategy picks the round's rows among the unlabelled ones (actprm: the
ActPRM rule at --delta-pred / --delta-std (default: the paper's 0.95 / 0.005, as the study recorded in
BENCHMARKS.md ran), the top ones by entropy when they outnumber the budget;
entropy / bald: top-k; random: the loop's seeded order), a verifier with 18% wrong answers labels them,
and the heads train on every label so far with the fixed recipe of configs/loop/label_efficiency.yaml
(heads only, AdamW, head lr 1e-2, 8 epochs, batch 16, 5 warm-up steps, no anchor; optimizer state carried
from round to round), then ProcessBench F1 at 0.5 on the eval set. The seed sets the random order, the
training seed and the verifier's answers. Recorded per round (--results, JSON lines, resumable): labels
bought, F1, the accuracies, the AUROC of the step std for the ensemble mean's own errors on the eval
steps, and the share of the unlabelled pool the rule marks uncertain after training, at the default
deltas and at deltas calibrated on round 1 for --target-rate and then held.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from actprm import uncertainty
from actprm.config import TrainConfig
from actprm.curves import labels_to_reach, mean_interval, row_stats, savings_ratio
from actprm.features import (
    HeadRun,
    cached_examples,
    set_bias_to_prior,
    train_heads_cached_many,
)
from actprm.judge.verifier import VerifierAnnotator
from actprm.metrics import auroc, processbench_scores
from actprm.model import HEADS_NAME, EnsembleHeads, default_prm_path
from bench.results import append, read_results
from bench.selection_lab import WORK, load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "label_efficiency_cached.jsonl"
BUDGETS = [0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 100]


def shipped_heads() -> EnsembleHeads:
    from safetensors.torch import load_file

    state = load_file(str(default_prm_path() / HEADS_NAME))
    k, h, d = state["W1"].shape
    heads = EnsembleHeads(h, k, d, init=False)
    heads.load_state_dict(state)
    return heads


def step_labels_of(truth: np.ndarray, n_scored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat per-step (true label 1/0, evaluated mask): steps after the first error are not evaluated."""
    lab, ev = [], []
    for t, n in zip(truth, n_scored):
        pos = np.arange(n)
        lab.append(np.where(pos == t, 0, 1) if t >= 0 else np.ones(n, dtype=np.int64))
        ev.append(pos <= t if t >= 0 else np.ones(n, dtype=bool))
    return np.concatenate(lab), np.concatenate(ev)


@torch.no_grad()
def probs_of(heads, x: torch.Tensor) -> np.ndarray:
    heads.eval()
    return torch.sigmoid(heads(x)).numpy()


def evaluate(heads, ev, truth: np.ndarray, step_lab: np.ndarray, step_ev: np.ndarray) -> dict:
    p = probs_of(heads, ev.x)
    st = row_stats(p, ev.offsets)
    pred = st["pred_first_error"]
    scores = processbench_scores(truth, pred)
    own_error = (st["mean"] < 0.5) != (step_lab == 0)
    std_auroc = auroc(st["std"][step_ev], own_error[step_ev].astype(int))
    return {"f1": scores["f1"], "error_acc": scores["error_acc"], "correct_acc": scores["correct_acc"],
            "std_auroc": std_auroc, "mean_errors": int(own_error[step_ev].sum())}


class CachedLearner:
    """Where every (strategy, seed) run on the cache starts: the shipped heads (and a copy, the anchor of
    their weight decay), no optimizer state, nothing labelled, the verifier seeded by the run."""

    def __init__(self, strategy: str, seed: int, pool, wrong_rate: float):
        self.strategy, self.seed = strategy, seed
        self.heads = shipped_heads()
        self.anchor = {k: v.detach().clone() for k, v in self.heads.state_dict().items()}
        self.opt_state = None
        self.labelled = np.zeros(len(pool), dtype=bool)
        self.order: list[int] = []
        self.labels: list[int] = []
        self.verifier = VerifierAnnotator(wrong_rate=wrong_rate, seed=seed)


class Learner(CachedLearner):
    """One (strategy, seed) run of the loop on the cache."""

    def __init__(self, strategy: str, seed: int, pool, args):
        super().__init__(strategy, seed, pool, args.wrong_rate)
        self.random_keys = (np.array([uncertainty.random_score(i, seed) for i in pool.ids])
                            if strategy == "random" else None)
        self.calibrated = None
        self.stats = None  # row_stats of the pool under the current heads (scored once per round)
        self.deltas = {"delta_pred": args.delta_pred, "delta_std": args.delta_std}
        self.probs = None

    def row_stats(self, probs, offsets) -> dict:
        return row_stats(probs, offsets, **self.deltas)

    def select(self, pool, k: int) -> np.ndarray:
        cand = np.flatnonzero(~self.labelled)
        if self.strategy == "random":
            return cand[np.argsort(-self.random_keys[cand], kind="stable")[:k]]
        st = self.stats if self.stats is not None else self.row_stats(probs_of(self.heads, pool.x), pool.offsets)
        if self.strategy == "actprm":  # the rule; the top ones by entropy when it marks more than the budget
            unc = cand[st["uncertain"][cand]]
            return unc[np.argsort(-st["entropy"][unc], kind="stable")[:k]]
        return cand[np.argsort(-st[self.strategy][cand], kind="stable")[:k]]


def run_world(args, world: str, strategies: list[str], seeds: list[int]) -> None:
    """Every (strategy, seed) learner of a world through the budgets, trained in lockstep groups."""
    pool, ptruth = load(Path(args.work), world, "pool", args.pool_rows)
    ev, etruth = load(Path(args.work), world, "eval", args.eval_rows)
    truth = np.array(ptruth["first_error_step"])
    e_truth = np.array(etruth["first_error_step"])
    step_lab, step_ev = step_labels_of(e_truth, np.diff(ev.offsets))
    if args.standardize:  # inputs standardised by the (unlabelled) pool's mean and std: foldable into W1, b1
        mu, sd = pool.x.mean(0), pool.x.std(0).clamp_min(1e-6)
        pool.x = (pool.x - mu) / sd
        ev.x = (ev.x - mu) / sd
    assert all(e is None for e in pool.errors) and (np.diff(pool.offsets) > 0).all(), "every world row fits"
    N = len(pool)
    base_cfg = TrainConfig(backbone="frozen", head_lr=args.head_lr, epochs=args.epochs, batch_size=16,
                           warmup_steps=5, anchor_lambda=0.0, learning_probability=args.learning_probability,
                           device="cpu", prior_bias=False, holdout=0.0)  # the study's fixed recipe
    done = {(r["strategy"], r["seed"]) for r in read_results(args.results)
            if r["world"] == world and r["variant"] == args.variant and r["pool_rows"] == N
            and r["budget_pct"] == max(args.budgets)}
    learners = [Learner(s, sd, pool, args) for sd in seeds for s in strategies if (s, sd) not in done]
    if not learners:
        return
    sample = np.zeros(N, dtype=bool)  # random learners: the rule's rates on 4,000 fixed rows
    sample[np.random.default_rng(0).choice(N, min(N, 4000), replace=False)] = True
    start = time.perf_counter()
    for r, budget in enumerate(sorted(args.budgets)):
        if budget > args.last_budget_all:  # the largest budgets: only the random learners (the reference)
            learners = [x for x in learners if x.strategy == "random"]
            if args.full_seeds is not None:
                learners = [x for x in learners if x.seed in seeds[: args.full_seeds]]
            if not learners:
                break
        total = round(N * budget / 100)
        t0 = time.perf_counter()
        for x in learners:
            pick = x.select(pool, total - int(x.labelled.sum()))
            x.labelled[pick] = True
            x.order.extend(pick.tolist())
            x.labels.extend(x.verifier.answer(pool.ids[i], int(truth[i]), int(pool.n_steps[i]), 0) for i in pick)
            if r == 0 and args.prior_bias:
                ex = cached_examples(pool, x.order, x.labels)
                set_bias_to_prior(x.heads, float(np.mean([t for e in ex for t in e.targets if t is not None])))
        select_s = (time.perf_counter() - t0) / len(learners)
        t0 = time.perf_counter()
        runs = [HeadRun(x.heads, cached_examples(pool, x.order, x.labels), x.anchor, x.seed, x.opt_state)
                for x in learners]
        groups: dict[tuple, list[int]] = {}
        for i, hr in enumerate(runs):
            steps = int(hr.optimizer_state["heads.W1::step"].item()) if hr.optimizer_state else 0
            groups.setdefault((len(hr.examples), steps), []).append(i)
        for idx in groups.values():
            train_heads_cached_many([runs[i] for i in idx], pool, base_cfg, error_weight=args.error_weight,
                                    feature_dropout=args.feature_dropout, bootstrap=args.bootstrap)
        train_s = time.perf_counter() - t0
        shown = []
        for x, hr in zip(learners, runs):
            x.opt_state = hr.optimizer_state
            line = {"world": world, "strategy": x.strategy, "seed": x.seed, "variant": args.variant,
                    "budget_pct": budget, "pool_rows": N, "eval_rows": len(ev), "labels": int(x.labelled.sum()),
                    "true_error_rows": int((truth[x.labelled] >= 0).sum()),
                    **evaluate(x.heads, ev, e_truth, step_lab, step_ev), "train_steps": hr.result.steps,
                    "train_s_all_learners": round(train_s, 2), "learners": len(learners),
                    "select_s": round(select_s, 2)}
            rest = ~x.labelled
            if x.strategy == "random":  # not needed for selection: the rule's rates on a fixed sample
                rest &= sample
            x.stats = None
            if rest.any():  # the share of the unlabelled pool the rule would send to the judge next
                if x.strategy == "random":
                    idx = np.flatnonzero(rest)
                    sub = pool.rows(idx)
                    st = x.row_stats(probs_of(x.heads, sub.x), sub.offsets)
                    mine = np.ones(len(idx), dtype=bool)
                else:  # the whole pool, once: the next round's selection reads these
                    x.probs = probs_of(x.heads, pool.x)
                    st = x.stats = x.row_stats(x.probs, pool.offsets)
                    mine = rest
                line["uncertain_rate"] = float(st["uncertain"][mine].mean())
                if x.calibrated is None:  # after round 1: deltas for about --target-rate, then held
                    x.calibrated = uncertainty.choose_deltas(
                        list(zip(st["max_std"][mine], st["min_conf"][mine])), args.target_rate)
                    line["calibrated"] = {k: x.calibrated[k] for k in ("delta_pred", "delta_std")}
                held = ~((st["max_std"] <= x.calibrated["delta_std"]) & (st["min_conf"] >= x.calibrated["delta_pred"]))
                line["uncertain_rate_held"] = float(held[mine].mean())
                # fixed rules that allow for the judge's noise: delta_pred 1 - wrong_rate (a correct step's mean
                # cannot pass it when its labels are that wrong), a few delta_std
                line["rates"] = {f"{dp:g}/{ds:g}": float((~((st["max_std"] <= ds) & (st["min_conf"] >= dp)))[mine].mean())
                                 for dp in (0.8, 0.9, 1 - args.wrong_rate) for ds in (0.01, 0.05, 1.0)}
            append(args.results, line)
            shown.append(f"{x.strategy[:3]}{x.seed}={line['f1']:.3f}")
        f1s = " ".join(shown)
        print(f"{world} {budget}%: {len(learners)} learners, train {train_s:.0f}s, "
              f"{time.perf_counter() - start:.0f}s so far; F1 {f1s}", flush=True)


def run_stream(args, world: str, seeds: list[int]) -> None:
    """The loop's stream mode (ActPRM's Algorithm 1) on the cache: one pass over the pool (a seeded order) in
    chunks of --chunk-rows; the current heads score a chunk, the rule (--stream-delta-pred / -std) marks its
    uncertain rows, the verifier labels them and the heads train --epochs on those rows only (`train_on:
    new`), continuing. One line per chunk: labels so far, the chunk's uncertain share and eval F1."""
    pool, ptruth = load(Path(args.work), world, "pool", args.pool_rows)
    ev, etruth = load(Path(args.work), world, "eval", args.eval_rows)
    truth = np.array(ptruth["first_error_step"])
    e_truth = np.array(etruth["first_error_step"])
    step_lab, step_ev = step_labels_of(e_truth, np.diff(ev.offsets))
    N = len(pool)
    deltas = {"delta_pred": args.stream_delta_pred, "delta_std": args.stream_delta_std}
    variant = f"{args.variant}-stream-{args.stream_delta_pred:g}-{args.stream_delta_std:g}"
    for seed in seeds:
        done = [r for r in read_results(args.results) if r["world"] == world and r["variant"] == variant
                and r["strategy"] == "stream" and r["seed"] == seed and r["pool_rows"] == N and r.get("last")]
        if done:
            continue
        heads = shipped_heads()
        anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
        verifier = VerifierAnnotator(wrong_rate=args.wrong_rate, seed=seed)
        order = np.argsort([-uncertainty.random_score(i, seed) for i in pool.ids], kind="stable")
        opt_state, labels, start = None, 0, time.perf_counter()
        chunks = [order[k:k + args.chunk_rows] for k in range(0, N, args.chunk_rows)]
        for c, chunk in enumerate(chunks):
            sub = pool.rows(chunk)
            st = row_stats(probs_of(heads, sub.x), sub.offsets, **deltas)
            pick = chunk[st["uncertain"]]
            labels += len(pick)
            line = {"world": world, "strategy": "stream", "seed": seed, "variant": variant, "pool_rows": N,
                    "eval_rows": len(ev), "chunk": c + 1, "rows_seen": int((c + 1) * args.chunk_rows),
                    "uncertain_rate": float(st["uncertain"].mean()), "labels": labels,
                    "last": c == len(chunks) - 1}
            if len(pick):
                answers = [verifier.answer(pool.ids[i], int(truth[i]), int(pool.n_steps[i]), 0) for i in pick]
                examples = cached_examples(pool, pick.tolist(), answers)
                if opt_state is None and args.prior_bias:
                    set_bias_to_prior(heads, float(np.mean([t for e in examples for t in e.targets if t is not None])))
                cfg = TrainConfig(backbone="frozen", head_lr=args.head_lr, epochs=args.epochs, batch_size=16,
                                  warmup_steps=5, anchor_lambda=0.0, device="cpu", seed=seed * 1000 + c,
                                  prior_bias=False, holdout=0.0, error_weight=args.error_weight)
                runs = [HeadRun(heads, examples, anchor, seed * 1000 + c, opt_state)]
                train_heads_cached_many(runs, pool, cfg, error_weight=args.error_weight)
                opt_state = runs[0].optimizer_state
            line |= evaluate(heads, ev, e_truth, step_lab, step_ev)
            append(args.results, line)
            print(f"{world} stream seed {seed} chunk {c + 1}: uncertain {line['uncertain_rate']:.2f}, "
                  f"{labels} labels, F1 {line['f1']:.3f}, {time.perf_counter() - start:.0f}s", flush=True)


def run(args) -> None:
    """A learner whose last budget is recorded is done; an unfinished one starts over (its lines are
    superseded by the rerun's)."""
    for world in args.world:
        if "stream" in args.strategies:
            run_stream(args, world, args.seeds)
        rest = [s for s in args.strategies if s != "stream"]
        if rest:
            run_world(args, world, rest, args.seeds)


# --------------------------------------------------------------------------- report


def curves(rows: list[dict], world: str, variant: str, strategy: str) -> dict[float, dict[int, dict]]:
    out: dict[float, dict[int, dict]] = {}
    for r in rows:
        if r["world"] == world and r["variant"] == variant and r["strategy"] == strategy:
            out.setdefault(r["budget_pct"], {})[r["seed"]] = r  # a rerun's line wins
    return out


def stream_report(rows: list[dict], stream: list[dict]) -> list[str]:
    """Per world and stream variant: per chunk, mean labels, uncertain share and F1 over seeds, against the
    random rounds' mean F1 at the same label count (linear between budgets; the same training options)."""
    out = []
    for world, variant in sorted({(r["world"], r["variant"]) for r in stream}):
        mine = [r for r in stream if r["world"] == world and r["variant"] == variant]
        seeds = sorted({r["seed"] for r in mine})
        rnd = curves(rows, world, variant.split("-stream-")[0], "random")  # the rounds run with the same options
        bs = sorted(rnd)
        rx = [np.mean([v["labels"] for v in rnd[b].values()]) for b in bs]
        ry = [np.mean([v["f1"] for v in rnd[b].values()]) for b in bs]
        out.append(f"\n### {world}, {variant}: per chunk, mean over {len(seeds)} seeds\n")
        out.append("| chunk | rows seen | uncertain share of the chunk | labels so far | F1 (95% half-width) "
                   "| random rounds' F1 at those labels |")
        out.append("|---|---|---|---|---|---|")
        for c in sorted({r["chunk"] for r in mine}):
            at = [r for r in mine if r["chunk"] == c]
            labels = float(np.mean([r["labels"] for r in at]))
            m, h = mean_interval([r["f1"] for r in at])
            ref = float(np.interp(labels, rx, ry)) if rx and rx[0] <= labels <= rx[-1] else float("nan")
            out.append(f"| {c} | {at[0]['rows_seen']} | {np.mean([r['uncertain_rate'] for r in at]):.2f} | "
                       f"{labels:.0f} | {m:.3f} ± {h:.3f} | {ref:.3f} |")
    return out


def report(args) -> None:
    rows = [r for r in read_results(args.results) if r["pool_rows"] == args.pool_rows]
    stream = [r for r in rows if r["strategy"] == "stream"]
    rows = [r for r in rows if r["strategy"] != "stream"]
    out = stream_report(rows, stream)
    for world in sorted({r["world"] for r in rows}):
        for variant in sorted({r["variant"] for r in rows if r["world"] == world}):
            strategies = [s for s in ("actprm", "random", "entropy", "bald")
                          if any(r["strategy"] == s and r["world"] == world and r["variant"] == variant for r in rows)]
            cs = {s: curves(rows, world, variant, s) for s in strategies}
            budgets = sorted({b for c in cs.values() for b in c})
            out.append(f"\n### {world}, variant {variant}: mean F1 ± 95% half-width (seeds)\n")
            out.append("| strategy | " + " | ".join(f"{b:g}%" for b in budgets) + " |")
            out.append("|---|" + "---|" * len(budgets))
            for s in strategies:
                cells = []
                for b in budgets:
                    v = [x["f1"] for x in cs[s].get(b, {}).values()]
                    m, h = mean_interval(v) if v else (float("nan"), float("nan"))
                    cells.append(f"{m:.3f} ± {h:.3f} ({len(v)})" if v else "-")
                out.append(f"| {s} | " + " | ".join(cells) + " |")
            full = [x["f1"] for s in strategies for x in cs[s].get(100, {}).values()]
            if "random" in cs:
                r10 = [x["f1"] for x in cs["random"].get(10, {}).values()]
                r30 = [x["f1"] for x in cs["random"].get(30, {}).values()]
                if r10 and r30:
                    out.append(f"\nregime check (random): F1 at 30% − at 10% = {np.mean(r30) - np.mean(r10):+.3f} "
                               f"(criterion ≥ +0.03); full-pool F1 {np.mean(full) if full else float('nan'):.3f} "
                               "(criterion ≥ 0.75)")
            if not full:
                continue
            ref = float(np.mean(full))
            out.append(f"\nfull-pool F1 (every learner at 100%): {ref:.3f}")
            for s in strategies:
                def rates(key):
                    return [np.mean([x[key] for x in cs[s][b].values() if x.get(key) is not None])
                            if any(x.get(key) is not None for x in cs[s][b].values()) else float("nan")
                            for b in budgets if b in cs[s]]
                auc = [np.mean([x["std_auroc"] for x in cs[s][b].values() if x["std_auroc"] is not None])
                       for b in budgets if b in cs[s]]
                out.append(f"- {s}: uncertain share after each round (default deltas) "
                           + " ".join(f"{v:.2f}" for v in rates("uncertain_rate"))
                           + "; held calibrated deltas " + " ".join(f"{v:.2f}" for v in rates("uncertain_rate_held"))
                           + "; std AUROC " + " ".join(f"{v:.2f}" for v in auc))
            if "random" not in cs:
                continue
            for s in strategies:
                if s == "random":
                    continue
                for name, target in (("90% of full", 0.9 * ref), ("full − 0.01", ref - 0.01)):
                    def curve(strat, seed=None):
                        bs = [b for b in budgets if b in cs[strat]]
                        if seed is None:
                            return ([np.mean([x["labels"] for x in cs[strat][b].values()]) for b in bs],
                                    [np.mean([x["f1"] for x in cs[strat][b].values()]) for b in bs])
                        bs = [b for b in bs if seed in cs[strat][b]]
                        return [cs[strat][b][seed]["labels"] for b in bs], [cs[strat][b][seed]["f1"] for b in bs]
                    mean_ratio = savings_ratio(curve("random"), curve(s), target)
                    per_seed = []
                    for seed in sorted({sd for b in cs[s].values() for sd in b} & {sd for b in cs["random"].values() for sd in b}):
                        per_seed.append(savings_ratio(curve("random", seed), curve(s, seed), target))
                    ok = [x for x in per_seed if x is not None]
                    m, h = mean_interval(ok) if ok else (float("nan"), float("nan"))
                    lr = labels_to_reach(*curve("random"), target)
                    ls = labels_to_reach(*curve(s), target)
                    out.append(f"- savings {s} vs random at {name} (F1 {target:.3f}): mean-curve ratio "
                               f"{'n/a' if mean_ratio is None else f'{mean_ratio:.2f}'} (random "
                               f"{'never' if lr is None else f'{lr:.0f}'} labels, {s} "
                               f"{'never' if ls is None else f'{ls:.0f}'}); per seed {m:.2f} ± {h:.2f} "
                               f"({len(ok)}/{len(per_seed)} seeds reach it)")
    text = "\n".join(out)
    print(text)
    if args.plot and rows:
        from actprm.plots import pyplot, save_figure

        plt = pyplot()
        worlds = sorted({r["world"] for r in rows})
        fig, axes = plt.subplots(1, len(worlds), figsize=(6.4 * len(worlds), 4.4), squeeze=False)
        for ax, world in zip(axes[0], worlds):
            variant = args.plot_variant
            for s in ("actprm", "random", "entropy", "bald"):
                c = curves(rows, world, variant, s)
                bs = sorted(c)
                if not bs:
                    continue
                x = [np.mean([v["labels"] for v in c[b].values()]) for b in bs]
                f = [np.array([v["f1"] for v in c[b].values()]) for b in bs]
                m = np.array([v.mean() for v in f])
                lo, hi = m - np.array([v.min() for v in f]), np.array([v.max() for v in f]) - m
                n = max(len(v) for v in f)
                ax.errorbar(x, m, yerr=[lo, hi], marker="o", capsize=3, label=f"{s} (≤{n} seeds)")
            ax.set(xscale="log", xlabel="labels bought (log)", ylabel="eval F1 (threshold 0.5); bars: seed min-max",
                   title=f"{world}, pool {args.pool_rows}, variant {variant}", ylim=(-0.02, 1.0))
            ax.grid(alpha=0.3)
            ax.legend()
        save_figure(fig, args.plot)
        print(f"plot: {args.plot}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["run", "report"])
    p.add_argument("--world", nargs="+", default=["arith", "arith-hard"])
    p.add_argument("--strategies", nargs="+", default=["actprm", "random", "entropy", "bald"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--budgets", type=float, nargs="+", default=BUDGETS)
    p.add_argument("--last-budget-all", type=float, default=100.0,
                   help="budgets above this run only the random learners (the full-pool reference)")
    p.add_argument("--full-seeds", type=int, default=None,
                   help="budgets above --last-budget-all: only the random learners of the first N seeds")
    p.add_argument("--pool-rows", type=int, default=20000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--wrong-rate", type=float, default=0.18, help="the verifier's share of wrong answers")
    p.add_argument("--head-lr", type=float, default=1e-2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--variant", default="base", help="name of the training options below (results key)")
    p.add_argument("--error-weight", type=float, default=1.0)
    p.add_argument("--prior-bias", action="store_true")
    p.add_argument("--learning-probability", type=float, default=1.0)
    p.add_argument("--feature-dropout", type=float, default=0.0)
    p.add_argument("--bootstrap", action="store_true")
    p.add_argument("--standardize", action="store_true", help="heads read inputs standardised by the pool's "
                   "mean and std (label-free; folds into the first layer)")
    p.add_argument("--target-rate", type=float, default=0.3, help="held deltas: calibrated after round 1")
    p.add_argument("--delta-pred", type=float, default=uncertainty.PAPER_DELTA_PRED, help="the actprm strategy's rule")
    p.add_argument("--chunk-rows", type=int, default=1000, help="stream: rows per chunk")
    p.add_argument("--stream-delta-pred", type=float, default=uncertainty.DEFAULT_DELTA_PRED,
                   help="stream: the rule (default: actprm's defaults)")
    p.add_argument("--stream-delta-std", type=float, default=uncertainty.DEFAULT_DELTA_STD)
    p.add_argument("--delta-std", type=float, default=uncertainty.PAPER_DELTA_STD)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plot", default=str(REPO / "bench" / "results" / "label_efficiency_cached.png"))
    p.add_argument("--plot-variant", default="base")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"run": run, "report": report}[args.mode](args)


if __name__ == "__main__":
    main()
