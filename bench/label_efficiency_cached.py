"""Label efficiency on cached backbone outputs: the selection study of a pool in minutes, not days.

    python -m bench.selection_lab extract [--world configs/worlds/arith-hard.yaml]     # once per world
    python -m bench.label_efficiency_cached run --world arith-hard --strategies actprm random entropy bald \\
        --seeds 0 1 2 3 4 [--variant NAME --error-weight 3 --prior-bias --learning-probability 0.5 ...]
    python -m bench.label_efficiency_cached report [--plot bench/results/label_efficiency_cached.png]

The loop of pipelines/active_loop.py (`rounds`, `train_on: all`) on the shipped PRM's cached head inputs
(actprm.features) instead of re-running the backbone: per cumulative budget (percent of the pool) the
current heads score the pool, the strategy picks the round's rows among the unlabelled ones (actprm: the
ActPRM rule at delta_pred 0.95 / delta_std 0.005, the top ones by entropy when they outnumber the budget;
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
import json
import time
from pathlib import Path

import numpy as np
import torch

from actprm import uncertainty
from actprm.config import TrainConfig
from actprm.curves import labels_to_reach, mean_interval, row_stats, savings_ratio
from actprm.evaluate import auroc, processbench_scores
from actprm.features import cached_examples, set_bias_to_prior, train_heads_cached
from actprm.judge.verifier import VerifierAnnotator
from actprm.model import HEADS_NAME, EnsembleHeads, default_prm_path
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


def run_one(args, world: str, strategy: str, seed: int, done: set) -> None:
    pool, ptruth = load(Path(args.work), world, "pool", args.pool_rows)
    ev, etruth = load(Path(args.work), world, "eval", args.eval_rows)
    truth = np.array(ptruth["first_error_step"])
    e_truth = np.array(etruth["first_error_step"])
    step_lab, step_ev = step_labels_of(e_truth, np.diff(ev.offsets))
    ok = np.array([e is None and n > 0 for e, n in zip(pool.errors, np.diff(pool.offsets))])
    assert ok.all(), "every world row fits"
    N = len(pool)
    verifier = VerifierAnnotator(wrong_rate=args.wrong_rate, seed=seed)
    random_keys = np.array([uncertainty.random_score(i, seed) for i in pool.ids])
    cfg = TrainConfig(backbone="frozen", head_lr=args.head_lr, epochs=args.epochs, batch_size=16, warmup_steps=5,
                      anchor_lambda=0.0, seed=seed, learning_probability=args.learning_probability, device="cpu")
    heads = shipped_heads()
    anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    opt_state = None
    labelled = np.zeros(N, dtype=bool)
    order: list[int] = []
    labels: list[int] = []
    calibrated = None
    start = time.perf_counter()
    for r, budget in enumerate(sorted(args.budgets)):
        total = round(N * budget / 100)
        k = total - int(labelled.sum())
        t0 = time.perf_counter()
        cand = np.flatnonzero(~labelled)
        if strategy == "random":
            pick = cand[np.argsort(-random_keys[cand], kind="stable")[:k]]
        else:
            st = row_stats(probs_of(heads, pool.x), pool.offsets)
            if strategy == "actprm":
                unc = cand[st["uncertain"][cand]]
                pick = unc[np.argsort(-st["entropy"][unc], kind="stable")[:k]]
            else:
                pick = cand[np.argsort(-st[strategy][cand], kind="stable")[:k]]
        score_s = time.perf_counter() - t0
        labelled[pick] = True
        order.extend(pick.tolist())
        for i in pick:
            labels.append(verifier.answer(pool.ids[i], int(truth[i]), int(pool.n_steps[i]), 0))
        if r == 0 and args.prior_bias:
            ex = cached_examples(pool, order, labels)
            targets = [t for e in ex for t in e.targets if t is not None]
            set_bias_to_prior(heads, float(np.mean(targets)))
        t0 = time.perf_counter()
        examples = cached_examples(pool, order, labels)
        res, opt_state = train_heads_cached(heads, pool, examples, cfg, anchor=anchor, optimizer_state=opt_state,
                                            error_weight=args.error_weight, feature_dropout=args.feature_dropout,
                                            bootstrap=args.bootstrap)
        train_s = time.perf_counter() - t0
        line = {"world": world, "strategy": strategy, "seed": seed, "variant": args.variant, "budget_pct": budget,
                "pool_rows": N, "eval_rows": len(ev), "labels": int(labelled.sum()),
                "true_error_rows": int((truth[labelled] >= 0).sum()),
                **evaluate(heads, ev, e_truth, step_lab, step_ev), "train_steps": res.steps,
                "train_s": round(train_s, 2), "select_s": round(score_s, 2)}
        rest = ~labelled
        if rest.any():  # the share of the unlabelled pool the rule would send to the judge next
            st = row_stats(probs_of(heads, pool.x), pool.offsets)
            line["uncertain_rate"] = float(st["uncertain"][rest].mean())
            if calibrated is None:  # round 1: deltas for about --target-rate, then held
                calibrated = uncertainty.choose_deltas(
                    list(zip(st["max_std"][rest], st["min_conf"][rest])), args.target_rate)
                line["calibrated"] = {k: calibrated[k] for k in ("delta_pred", "delta_std")}
            st2 = row_stats(probs_of(heads, pool.x), pool.offsets, delta_pred=calibrated["delta_pred"],
                            delta_std=calibrated["delta_std"])
            line["uncertain_rate_held"] = float(st2["uncertain"][rest].mean())
        append(args.results, line)
        print(f"{world} {strategy} s{seed} {args.variant} {budget}%: {line['labels']} labels, F1 {line['f1']:.3f}, "
              f"std AUROC {line['std_auroc']}, uncertain {line.get('uncertain_rate')}, "
              f"train {train_s:.1f}s", flush=True)
    print(f"{world} {strategy} s{seed}: {time.perf_counter() - start:.0f}s", flush=True)


def read_results(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def append(path: Path, row: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def run(args) -> None:
    rows = read_results(args.results)
    for seed in args.seeds:
        for world in args.world:
            for strategy in args.strategies:
                have = {r["budget_pct"] for r in rows if r["world"] == world and r["strategy"] == strategy
                        and r["seed"] == seed and r["variant"] == args.variant and r["pool_rows"] == args.pool_rows}
                if set(args.budgets) <= have:
                    continue
                if have:  # a half-finished run starts over (its lines are superseded by the rerun's)
                    print(f"{world} {strategy} s{seed}: rerun (had {sorted(have)})", flush=True)
                run_one(args, world, strategy, seed, set())


# --------------------------------------------------------------------------- report


def curves(rows: list[dict], world: str, variant: str, strategy: str) -> dict[float, dict[int, dict]]:
    out: dict[float, dict[int, dict]] = {}
    for r in rows:
        if r["world"] == world and r["variant"] == variant and r["strategy"] == strategy:
            out.setdefault(r["budget_pct"], {})[r["seed"]] = r  # a rerun's line wins
    return out


def report(args) -> None:
    rows = [r for r in read_results(args.results) if r["pool_rows"] == args.pool_rows]
    out = []
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
            out.append(f"\nfull-pool F1 (every strategy and seed at 100%): {ref:.3f}")
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
                mi = [mean_interval([v["f1"] for v in c[b].values()]) for b in bs]
                ax.errorbar(x, [m for m, _ in mi], yerr=[0 if np.isnan(h) else h for _, h in mi], marker="o",
                            capsize=3, label=s)
            ax.set(xscale="log", xlabel="labels bought (log)", ylabel="eval F1 (threshold 0.5)",
                   title=f"{world}, pool {args.pool_rows}, variant {variant}")
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
    p.add_argument("--target-rate", type=float, default=0.3, help="held deltas: calibrated after round 1")
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
