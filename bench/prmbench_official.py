"""PRMBench's official scorer against actprm's figures: the same numbers, to the last bit?

    python -m bench.prmbench_official --official PATH/TO/PRMBench --eval out/eval-prmbench \
        [--data ../shared/data/prmbench] [--synthetic 300]

PATH/TO/PRMBench is a checkout of ssmisya/PRMBench (its code is not shipped here; this script runs its
`evaluate_function` and `load_data_function` from mr_eval/tasks/prmtest_classified/task.py, without the
framework's imports). `--eval` is the output of `actprm evaluate` on PRMBench's files: the official scorer
scores its predictions.parquet (`idx` = `id`, `step_level_validity_labels` = `step_valid`), with the
samples loaded from `--data` as the official loader builds them, and every figure is compared with
metrics.json; the official samples actprm refused (error rows) are listed. `--synthetic N` also compares actprm.prmbench.prmbench_metrics with the official scorer on N
random prediction sets with edge cases (no error predicted, every step an error, classes absent, `correct`
samples missing, labels shorter than the solution). Prints the largest difference; writes JSON to --output.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import random
from pathlib import Path

import pyarrow.parquet as pq

from actprm.prmbench import CLASSES, prmbench_metrics

METRICS = ("correct_step_acc", "wrong_step_acc", "total_step_acc", "first_error_acc", "similarity", "precision",
           "recall", "f1", "negative_precision", "negative_recall", "negative_f1")


def official_scorer(checkout: Path) -> dict:
    """The task module's functions, executed from the checkout without its framework imports."""
    source = (checkout / "mr_eval" / "tasks" / "prmtest_classified" / "task.py").read_text()
    namespace = {"task_config": {}, "logger": logging.getLogger("prmbench"), "os": os}
    exec(compile(source[source.index("def load_data_function"):], "task.py", "exec"), namespace)
    return namespace


def differences(official: dict, mine: dict) -> list[tuple[str, float]]:
    """|official − actprm| of every figure: overall, and per class (PRMScore = 0.5 f1 + 0.5 negative_f1)."""
    out = []
    total = official["total_hallucination_results"]
    for k in METRICS:
        out.append((k, abs(total[k] - mine[k])))
    out.append(("prmscore", abs(0.5 * total["f1"] + 0.5 * total["negative_f1"] - mine["prmscore"])))
    per = official["hallucination_type_results"]
    for k in METRICS:
        for c, v in per[k].items():
            out.append((f"{c}.{k}", abs(v - mine["classes"][c][k])))
    for c in per["f1"]:
        out.append((f"{c}.prmscore", abs(0.5 * per["f1"][c] + 0.5 * per["negative_f1"][c]
                                          - mine["classes"][c]["prmscore"])))
    return out


def results_of(rows: list[dict]) -> list[dict]:
    return [{"idx": r["id"], "scores": {"step_level_validity_labels": list(r["step_valid"])}} for r in rows]


def compare_eval(ns: dict, eval_dir: Path, data: Path) -> dict:
    rows = [r for r in pq.read_table(eval_dir / "predictions.parquet").to_pylist() if r["benchmark"] == "prmbench"]
    raw = [json.loads(line) for f in sorted(glob.glob(str(data / "*.jsonl"))) for line in open(f)]
    ns["load_dir_of_jsonl_data_function_default"] = lambda _cfg: raw
    meta = ns["load_data_function"]()
    official = ns["evaluate_function"](results_of(rows), meta)
    mine = json.loads((eval_dir / "metrics.json").read_text())["prmbench"]
    diffs = differences(official, mine)
    # the official scorer scores the predictions it is given: say which of its samples actprm refused
    not_scored = sorted({m["idx"] for m in meta} - {r["id"] for r in rows})
    return {"figures": len(diffs), "max_abs_diff": max(d for _, d in diffs),
            "over_1e-9": [k for k, d in diffs if d > 1e-9], "samples": len(rows),
            "official_samples": len(meta), "refused_by_actprm": not_scored}


def synthetic_rows(rnd: random.Random) -> list[dict]:
    classes = rnd.sample(CLASSES, rnd.randint(1, len(CLASSES)))
    rows = []
    for i in range(rnd.randint(1, 12)):
        for c in classes:
            if rnd.random() < 0.3:
                continue
            n = rnd.randint(1, 6)
            errors = sorted(rnd.sample(range(1, n + 3), rnd.randint(1, 2)))
            mode = rnd.choice(["random", "none", "all", "empty", "short"])
            k = {"empty": 0, "short": rnd.randint(0, n)}.get(mode, n)
            valid = {"none": [True] * k, "all": [False] * k}.get(mode, [rnd.random() < 0.6 for _ in range(k)])
            rows.append({"id": f"{c}_it{i}", "classification": c, "error_steps": errors, "step_valid": valid})
            if c == "redundency" and rnd.random() < 0.8:  # else: its correct sample is missing
                k = rnd.randint(0, n)
                rows.append({"id": f"correct_it{i}", "classification": "correct", "error_steps": [],
                             "step_valid": rnd.choice([[True] * k, [False] * k, [rnd.random() < 0.5 for _ in range(k)]])})
    rnd.shuffle(rows)
    return rows


def compare_synthetic(ns: dict, n: int) -> dict:
    worst, figures = 0.0, 0
    for seed in range(n):
        rows = synthetic_rows(random.Random(seed))
        if not rows:
            continue
        meta = [{"idx": r["id"], "classification": r["classification"], "error_steps": r["error_steps"]} for r in rows]
        diffs = differences(ns["evaluate_function"](results_of(rows), meta), prmbench_metrics(rows))
        figures += len(diffs)
        worst = max(worst, *(d for _, d in diffs))
    return {"sets": n, "figures": figures, "max_abs_diff": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of ssmisya/PRMBench")
    parser.add_argument("--eval", type=Path, help="an `actprm evaluate` output directory on PRMBench's files")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/prmbench"))
    parser.add_argument("--synthetic", type=int, default=300)
    parser.add_argument("--output", type=Path, default=Path("bench/results/prmbench_official.json"))
    args = parser.parse_args()
    ns = official_scorer(args.official)
    report = {"synthetic": compare_synthetic(ns, args.synthetic) if args.synthetic else None,
              "eval": compare_eval(ns, args.eval, args.data) if args.eval else None}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
