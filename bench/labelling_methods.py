"""Labelling methods compared: a PRM trained on judge-like labels (the verifier) vs on rollout labels.

    python -m bench.labelling_methods [--rows 300] [--eval-rows 1000] [--ks 4 8] [--temperature 0.7]

A world pool of --rows trajectories (generate seed 1, train split) is labelled by each method at the
same budget (every pool row labelled once):

- `verifier w=0.18` (a judge of ProcessBench F1 ~0.82, like QwQ-32B) and `verifier w=0` (ground truth);
- `rollout k=K hard|soft`: the rollout annotator (actprm.judge.rollout) with the shipped world backbone
  as the prover, in-process, K completions per step prefix at --temperature, stop at the earliest
  error; hard = train on the earliest error (first Q = 0), soft = train on the values Q.

Each label set trains the shipped PRM one round with the heads-only recipe of
configs/loop/label_efficiency.yaml (`train:` block) and is evaluated on an eval set of --eval-rows
(seed 2, about half with an error) with actprm evaluate (ProcessBench F1 at 0.5; also, as an oracle
figure of label quality apart from calibration, F1 at the eval set's own best threshold, and step AUROC).
Reported per method besides: the labels' exact-match rate against the world's truth, prover requests (prefixes rolled out), completions,
prompt and completion tokens, and seconds. Rollout answers go to one answer cache under --work, so
k=4's labels are the first 4 samples of k=8's and a rerun pays nothing; each result line is appended to
--results as soon as it is done, and a rerun skips the methods already there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml

from actprm.config import EvaluateConfig, JudgeConfig, TrainConfig
from actprm.io.writers import write_parquet_atomic
from actprm.judge import make_annotator
from actprm.judge.cache import AnswerCache
from actprm.judge.rollout import RolloutAnnotator
from actprm.schemas import table_from_rows
from actprm.world.arith import Generator
from pipelines.evaluate import run as run_evaluate
from pipelines.train import run as run_train

REPO = Path(__file__).resolve().parents[1]


def write(rows: list[dict], path: Path, schema: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table_from_rows(rows, schema), path)
    return path


def label(method: str, pool: list[dict], work: Path, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Annotations of the pool by `method` and its cost."""
    start = time.perf_counter()
    if method.startswith("verifier"):
        rate = float(method.split("w=")[1])
        rows = make_annotator(JudgeConfig(backend="verifier", wrong_rate=rate, seed=0)).annotate(pool)
        return rows, {"requests": 0, "completions": 0, "prompt_tokens": 0, "completion_tokens": 0,
                      "label_seconds": time.perf_counter() - start}
    k, kind = int(method.split("k=")[1].split()[0]), method.split()[-1]
    cfg = JudgeConfig(backend="rollout", rollouts=k, temperature=args.temperature, top_p=1.0,
                      max_tokens=args.max_tokens, rollout_labels=kind, prover_threads=1, concurrency=64)
    annotator = RolloutAnnotator(cfg, AnswerCache(work / "rollout_cache.sqlite"))
    rows = annotator.annotate(pool)
    # requests a fresh run makes: the problem alone + every prefix rolled out (the last step needs none)
    requests = sum(1 + sum(v is not None for v in (r["step_values"] or [])[:-1]) for r in rows if r["error"] is None)
    return rows, {"requests": requests, "completions": requests * k,
                  "prompt_tokens": sum(r["prompt_tokens"] for r in rows),
                  "completion_tokens": sum(r["completion_tokens"] for r in rows),
                  "paid_now_requests": annotator.stats.requests, "label_seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.labelling_methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--ks", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--config", default=str(REPO / "configs/loop/label_efficiency.yaml"))
    parser.add_argument("--work", default=str(REPO / "runs/labelling_methods"))
    parser.add_argument("--results", default=str(REPO / "bench/results/labelling_methods.jsonl"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work, results = Path(args.work), Path(args.results)
    pool = list(Generator(seed=1).rows(0, args.rows))
    pool_path = write(pool, work / "pool.parquet", "trajectories")
    eval_path = write(list(Generator(seed=2).rows(0, args.eval_rows, "eval")), work / "eval.parquet", "trajectories")
    truth = {r["id"]: r["first_error_step"] for r in pool}
    recipe = yaml.safe_load(Path(args.config).read_text())["train"]
    methods = ["verifier w=0.18", "verifier w=0"] + [f"rollout k={k} {kind}" for k in sorted(args.ks)
                                                      for kind in ("hard", "soft")]
    done = set()
    if results.exists():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            if r["rows"] == args.rows and r["eval_rows"] == args.eval_rows and r.get("temperature") == args.temperature:
                done.add(r["method"])
    for method in methods:
        if method in done:
            print(f"{method}: done before, skipped")
            continue
        rows, cost = label(method, pool, work, args)
        slug = method.replace(" ", "_").replace("=", "")
        ann_path = write(rows, work / slug / "annotations.parquet", "annotations")
        labelled = [r for r in rows if r["error"] is None]
        exact = sum(r["first_error_step"] == truth[r["id"]] for r in labelled) / max(1, len(pool))
        start = time.perf_counter()
        run_train(TrainConfig(**recipe, trajectories=[str(pool_path)], annotations=[str(ann_path)],
                              output=str(work / slug / "model"), overwrite=True, threads=1), progress=False)
        train_s = time.perf_counter() - start
        ev = run_evaluate(EvaluateConfig(data=[str(eval_path)], model=str(work / slug / "model"),
                                         output=str(work / slug / "eval"), overwrite=True, threads=1), progress=False)
        metrics = json.loads((work / slug / "eval" / "metrics.json").read_text())
        line = {"method": method, "rows": args.rows, "eval_rows": args.eval_rows, "temperature": args.temperature,
                "labelled": len(labelled), "label_exact": round(exact, 4), "f1": metrics["mean_f1"],
                **cost, "train_seconds": round(train_s, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        del ev
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)
    table = [json.loads(x) for x in results.read_text().splitlines()]
    print("| method | F1 at 0.5 | F1 at best threshold | step AUROC | exact labels | requests | completions "
          "| prompt tokens | completion tokens | labelling s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        if r["rows"] == args.rows and r["eval_rows"] == args.eval_rows and r.get("temperature") == args.temperature:
            best, auroc = eval_extras(work / r["method"].replace(" ", "_").replace("=", "") / "eval")
            print(f"| {r['method']} | {r['f1']:.3f} | {best:.3f} | {auroc:.3f} | {r['label_exact']:.3f} | {r['requests']} "
                  f"| {r['completions']} | {r['prompt_tokens']} | {r['completion_tokens']} | {r['label_seconds']:.0f} |")
    return 0


def eval_extras(eval_dir: Path) -> tuple[float, float]:
    """(F1 at the eval set's own best threshold: an oracle figure for label quality apart from calibration,
    step AUROC) from an evaluate output."""
    from actprm.metrics import best_threshold

    rows = pq.read_table(eval_dir / "predictions.parquet").to_pylist()
    _, f1 = best_threshold([r["step_mean"] for r in rows], [r["label"] for r in rows])
    return f1, json.loads((eval_dir / "metrics.json").read_text())["step_auroc"]


if __name__ == "__main__":
    raise SystemExit(main())
