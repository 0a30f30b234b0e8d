"""Implicit PRM from outcome labels against the ensemble PRM from verifier labels (BENCHMARKS.md, "Implicit PRM").

    python -m bench.implicit_prm [--budgets 5 10 20 50 100] [--prime-rounds 4] [--prime-labels 500] [--threads 1]
    python -m bench.implicit_prm report      # the BENCHMARKS.md table from the results

The label-efficiency world (pool: `actprm generate` n=5000 seed 1; eval: n=1000 seed 2 --eval-set), read
from --work (default runs/label_efficiency, generated there when missing; read-only otherwise):

- (a) ensemble PRM + verifier labels: read from bench/results/label_efficiency.jsonl (not rerun);
- (b) the implicit PRM (actprm.implicit, the shipped backbone as pi_theta and as frozen pi_ref) trained one
  round with `implicit-ce` on the outcome labels (the final answer against reference_answer, actprm.outcome)
  of the first N% of the pool; ProcessBench F1 (actprm.metrics) and step AUROC on the eval set, with
  step_mean = sigmoid(q_k) (the default) and sigmoid(r_k); cost: 0 judge calls;
- (c) PRIME-style online rounds: each round scores --prime-sample unlabelled pool rows with the current
  implicit PRM, takes the --prime-labels rows the margin rule is least sure of (ActPRM's rule with one
  model: uncertain first, by margin acquisition), labels them with the outcome checker and trains one
  round from the last checkpoint on the round's labels only (an online update), then evaluates. The
  same steps as `actprm loop --config configs/loop/prime.yaml` (pipelines/loop.py, which needs
  Ray), run in-process here.

Every result is appended to --results (JSON lines) when measured; a rerun skips the finished ones.
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
from actprm.implicit import load_implicit
from actprm.io.readers import iter_batches, open_corpus
from actprm.labels import LabelCounts
from actprm.metrics import compute_metrics, predict_first_error
from actprm.outcome import OutcomeAnnotator
from actprm.scoring import score_trajectories
from actprm.trainer import train_and_save_implicit
from bench.label_efficiency import append, read_results, world

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "implicit_prm.jsonl"
ENSEMBLE = REPO / "bench" / "results" / "label_efficiency.jsonl"


def read_rows(path: Path) -> list[dict]:
    return [r for b in iter_batches(open_corpus([str(path)])) for r in b.valid]


def evaluate(model_dir: str | None, rows: list[dict]) -> dict:
    """F1 / step AUROC with step_mean = sigmoid(q_k) ("value") and sigmoid(r_k) ("reward"), one scoring pass."""
    model, tok = load_implicit(model_dir)
    results = score_trajectories(model, tok, [r["problem"] for r in rows], [r["steps"] for r in rows],
                                 batch_tokens=2048, device="cpu")
    out = {}
    for name, key in (("value", "step_value"), ("reward", "step_reward")):
        preds = []
        for row, res in zip(rows, results):
            mean = [] if res.error else (1 / (1 + np.exp(-getattr(res, key).astype(np.float64)))).tolist()
            preds.append({"id": row["id"], "subset": "world", "label": row["first_error_step"],
                          "prediction": predict_first_error(mean), "step_mean": mean,
                          "n_scored_steps": 0 if res.error else res.n_scored_steps, "n_steps": len(row["steps"])})
        m = compute_metrics(preds)
        s = m["subsets"]["world"]
        out[name] = {"mean_f1": m["mean_f1"], "error_acc": s["error_acc"], "correct_acc": s["correct_acc"],
                     "step_auroc": m["step_auroc"]}
    return out


def train(rows: list[dict], model: str | None, output: Path, args, seed: int = 0) -> dict:
    cfg = TrainConfig(objective="implicit-ce", model=model, output=str(output), overwrite=True, lr=args.lr,
                      beta=args.beta, epochs=args.epochs, batch_size=16, warmup_steps=5, seed=seed, device="cpu")
    result = train_and_save_implicit(cfg, rows, LabelCounts(labelled=len(rows)), torch.device("cpu"))
    return {"steps": result.round.steps, "loss": result.round.last_loss, "seconds": round(result.round.seconds, 1)}


def outcome_rows(rows: list[dict]) -> list[dict]:
    """The rows with their outcome labels only (the checker's), as a labelled table would carry them."""
    ann = {a["id"]: a for a in OutcomeAnnotator().annotate(rows)}
    return [{"id": r["id"], "problem": r["problem"], "steps": r["steps"],
             "label_first_error": ann[r["id"]]["first_error_step"], "label_weight": 1.0} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(REPO / "runs" / "label_efficiency"), help="holds world/ (read)")
    p.add_argument("--out", default=str(REPO / "runs" / "implicit_prm"), help="checkpoints")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--budgets", nargs="+", type=int, default=[5, 10, 20, 50, 100])
    p.add_argument("--prime-rounds", dest="prime_rounds", type=int, default=4)
    p.add_argument("--prime-labels", dest="prime_labels", type=int, default=500)
    p.add_argument("--prime-sample", dest="prime_sample", type=int, default=1000)
    p.add_argument("--beta", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work, out, results = Path(args.work), Path(args.out), Path(args.results)
    pool = read_rows(world(work, "pool", 5000, 1))
    ev = [r for r in read_rows(world(work, "eval", 1000, 2, eval_set=True)) if r["first_error_step"] is not None]
    done = {(r["kind"], r.get("budget_pct"), r.get("round")) for r in read_results(results)}
    recipe = {"beta": args.beta, "lr": args.lr, "epochs": args.epochs, "batch_size": 16}

    def record(row: dict) -> None:
        append(results, row | {"pool_rows": len(pool), "eval_rows": len(ev), "recipe": recipe, "judge_calls": 0})
        v, rw = row["value"], row["reward"]
        print(f"{row['kind']} {row.get('budget_pct', row.get('round'))}: labels {row['labels']}, "
              f"F1 {v['mean_f1']:.3f} (sigmoid r_k: {rw['mean_f1']:.3f}), AUROC {v['step_auroc']}", flush=True)

    if ("untrained", None, None) not in done:
        record({"kind": "untrained", "labels": 0, **evaluate(None, ev)})
    order = sorted(args.budgets, key=lambda b: (b == 100, b))  # the full pool last: the slowest
    for pct in order:
        if pct == 100 and ("prime", None, args.prime_rounds) not in done:
            prime(pool, ev, out, args, done, record)
        if ("offline", pct, None) in done:
            continue
        n = len(pool) * pct // 100
        t0 = time.perf_counter()
        fit = train(outcome_rows(pool[:n]), None, out / f"offline-{pct}", args)
        record({"kind": "offline", "budget_pct": pct, "labels": n, "train": fit,
                "seconds": round(time.perf_counter() - t0, 1), **evaluate(str(out / f"offline-{pct}"), ev)})
    prime(pool, ev, out, args, done, record)


def prime(pool, ev, out: Path, args, done: set, record) -> None:
    """PRIME-style online rounds (see the module docstring)."""
    labelled: set[str] = set()
    model = None
    for r in range(1, args.prime_rounds + 1):
        ckpt = out / f"prime-round-{r}"
        picked_file = ckpt.parent / f"prime-round-{r}.ids.json"
        if ("prime", None, r) in done and ckpt.is_dir() and picked_file.is_file():
            labelled |= set(json.loads(picked_file.read_text()))
            model = str(ckpt)
            continue
        t0 = time.perf_counter()
        rng = np.random.default_rng([0, r])
        left = [row for row in pool if row["id"] not in labelled]
        cand = [left[i] for i in sorted(rng.choice(len(left), min(args.prime_sample, len(left)), replace=False))]
        m, tok = load_implicit(model)
        res = score_trajectories(m, tok, [c["problem"] for c in cand], [c["steps"] for c in cand], device="cpu")
        ok = [(c, x) for c, x in zip(cand, res) if x.error is None]
        summary = uncertainty.summarize([x.probs for _, x in ok], [c["id"] for c, _ in ok], acquisition="margin")
        ids = [c["id"] for c, _ in ok]
        # uncertain first, then by margin acquisition (ties by id): the budget's worth
        key = np.where(summary["uncertain"], 1.0, 0.0) + summary["acquisition"].astype(np.float64)
        chosen = uncertainty.select_budget(ids, key, args.prime_labels)
        picked = [c for (c, _), keep in zip(ok, chosen) if keep]
        fit = train(outcome_rows(picked), model, ckpt, args, seed=r)
        picked_file.write_text(json.dumps([c["id"] for c in picked]))
        labelled |= {c["id"] for c in picked}
        model = str(ckpt)
        if ("prime", None, r) not in done:
            record({"kind": "prime", "round": r, "labels": len(labelled), "uncertain_rate":
                    round(float(np.mean(summary["uncertain"])), 4), "train": fit,
                    "seconds": round(time.perf_counter() - t0, 1), **evaluate(model, ev)})
            done.add(("prime", None, r))


def report(results: Path = RESULTS) -> str:
    """The BENCHMARKS.md table: (a) ensemble + verifier labels (label_efficiency.jsonl, seed 0), (b) offline
    implicit, (c) PRIME rounds; F1 with sigmoid(q_k), F1 with sigmoid(r_k), step AUROC, labels, judge calls."""
    def f(x):
        return "–" if x is None else f"{x:.3f}"

    header = ("| PRM | labels | label source | judge calls | F1, step_mean = σ(q_k) | F1, σ(r_k) | step AUROC, σ(q_k) "
              "| step AUROC, σ(r_k) |")
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in sorted(read_results(ENSEMBLE), key=lambda r: (r["strategy"], r["labels"])):
        if r.get("kind") == "pool" and r.get("seed") == 0 and r["strategy"] in ("actprm", "random"):
            lines.append(f"| (a) ensemble, {r['strategy']} selection | {r['labels']:,} ({r['budget_pct']}%) | verifier "
                         f"(18% wrong) | {r['labels']:,} | {f(r['mean_f1'])} | – | {f(r['step_auroc'])} | – |")
    rows = read_results(results)
    for r in sorted(rows, key=lambda r: ({"untrained": 0, "offline": 1, "prime": 2}[r["kind"]], r["labels"])):
        what = {"untrained": "implicit, untrained backbone", "offline": f"(b) implicit, first {r.get('budget_pct')}%",
                "prime": f"(c) implicit, PRIME round {r.get('round')}"}[r["kind"]]
        lines.append(f"| {what} | {r['labels']:,} | outcome checker | 0 | {f(r['value']['mean_f1'])} | "
                     f"{f(r['reward']['mean_f1'])} | {f(r['value']['step_auroc'])} | {f(r['reward']['step_auroc'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["report"]:
        print(report())
    else:
        main()
