"""The seed's corpus experiment at this machine's scale: one pass of `actprm loop --mode stream` over a 20,000-row
corpus produces a PRM; `actprm filter` runs that PRM over a fresh 100,000-row corpus of the same world and keeps
the rows it is unsure of; a PRM trained on the kept rows is compared with one trained on a random sample of the
same size (the seed: "over 1M rollouts filtered, ~60% kept").

    python -m bench.one_pass_filter --world configs/worlds/arith-rare.yaml [--fresh-rows 100000] [--seeds 0 1 2]

Everything runs through the CLI verbs (generate, loop, filter) except the last step: the two training sets are
labelled by the verifier (18% wrong answers) and trained with `actprm train`'s defaults on cached backbone
outputs (the same recipe and stopping rule as the `train` verb, a round from the shipped PRM), and evaluated on
the world's eval set at each checkpoint's decision threshold. Work files in runs/one_pass_filter/<world>/ (a
rerun reuses each finished step); one JSON line per world in bench/results/one_pass_filter.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from actprm.calibration import rule_constants
from actprm.config import TrainConfig
from actprm.curves import mean_interval, row_stats
from actprm.features import cached_examples, extract_head_inputs, train_heads_cached
from actprm.judge.verifier import VerifierAnnotator
from actprm.metrics import processbench_scores
from actprm.model import default_prm_path, load_prm
from actprm.trainer import split_holdout
from bench.label_efficiency_cached import shipped_heads
from bench.results import append

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "one_pass_filter.jsonl"


def cli(*args: str) -> float:
    """Run `actprm ARGS` (exit 0 or raise); its wall seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "actprm.cli", *args, "--no-progress"], check=True, cwd=REPO)
    return time.perf_counter() - t0


def rows_of(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@torch.no_grad()
def f1_of(heads, ev, truth) -> float:
    st = row_stats(torch.sigmoid(heads(ev.x)).numpy(), ev.offsets, threshold=rule_constants(heads.calibration)[0])
    return processbench_scores(truth, st["pred_first_error"])["f1"]


def train_on(cache, idx: list[int], truth: np.ndarray, seed: int, ev, e_truth) -> float:
    """actprm train's default round from the shipped heads on rows `idx` of `cache`, verifier-labelled."""
    verifier = VerifierAnnotator(wrong_rate=0.18, seed=seed)
    labels = [verifier.answer(cache.ids[i], int(truth[i]), int(cache.n_steps[i]), 0) for i in idx]
    rows = [{"id": cache.ids[i], "i": i, "label": int(truth[i]) if lab is None else lab} for i, lab in zip(idx, labels)]
    cfg = TrainConfig(device="cpu", seed=seed)
    train, held = split_holdout(rows, cfg.holdout)
    heads = shipped_heads()
    anchor = {k: v.detach().clone() for k, v in heads.state_dict().items()}
    ex = cached_examples(cache, [r["i"] for r in train], [r["label"] for r in train])
    hx = cached_examples(cache, [r["i"] for r in held], [r["label"] for r in held])
    train_heads_cached(heads, cache, ex, cfg, anchor=anchor, holdout=hx)
    return f1_of(heads, ev, e_truth)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", default="configs/worlds/arith-rare.yaml")
    p.add_argument("--pass-rows", type=int, default=20000)
    p.add_argument("--fresh-rows", type=int, default=100000)
    p.add_argument("--eval-rows", type=int, default=1000)
    p.add_argument("--chunk-rows", type=int, default=5000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "one_pass_filter")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    name = Path(args.world).stem
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    for what, n, seed, extra in (("pool", args.pass_rows, 1, []), ("eval", args.eval_rows, 2, ["--eval-set"]),
                                 ("fresh", args.fresh_rows, 7, [])):
        if not (work / what).is_dir():
            seconds[f"generate_{what}"] = cli("generate", "--world-config", args.world, "--n", str(n), "--seed",
                                              str(seed), "--output", str(work / what), *extra)
    run = work / "loop"
    if not (run / "state.json").is_file() or json.loads((run / "state.json").read_text()).get("step") != "done":
        seconds["loop"] = cli("loop", "--config", "configs/loop/stream.yaml", "--pool", str(work / "pool"),
                              "--eval", str(work / "eval"), "--chunk-rows", str(args.chunk_rows),
                              "--output", str(run), "--threads", "1")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    model = metrics[-1]["checkpoint"]
    if not (work / "filtered" / "summary.json").is_file():
        seconds["filter"] = cli("filter", "--model", model, "--input", str(work / "fresh"), "--output",
                                str(work / "filtered"), "--overwrite")
    summary = json.loads((work / "filtered" / "summary.json").read_text())
    fresh = rows_of(work / "fresh")
    kept_ids = set(pq.read_table(work / "filtered" / "selected", columns=["id"]).column("id").to_pylist())
    index = {r["id"]: i for i, r in enumerate(fresh)}
    kept = sorted(index[i] for i in kept_ids)
    # the rows the comparisons train on, through the shipped backbone once (cached)
    cache_path = work / "train_inputs.safetensors"
    samples = {s: sorted(np.random.default_rng(s).choice(len(fresh), len(kept), replace=False).tolist())
               for s in args.seeds}
    need = sorted(set(kept).union(*samples.values()))
    from actprm.features import HeadInputs

    prm, tok = load_prm(str(default_prm_path()))
    if cache_path.is_file():
        cache = HeadInputs.load(cache_path)
    else:
        t0 = time.perf_counter()
        cache = extract_head_inputs(prm, tok, [fresh[i] for i in need], progress=True)
        cache.save(cache_path)
        seconds["extract"] = time.perf_counter() - t0
    at = {rid: j for j, rid in enumerate(cache.ids)}
    truth = np.array([fresh[index[rid]]["first_error_step"] for rid in cache.ids])
    ev_rows = rows_of(work / "eval")
    ev = extract_head_inputs(prm, tok, ev_rows)
    e_truth = np.array([r["first_error_step"] for r in ev_rows])
    kept_f1, random_f1 = [], []
    for s in args.seeds:
        kept_f1.append(train_on(cache, [at[fresh[i]["id"]] for i in kept], truth, s, ev, e_truth))
        random_f1.append(train_on(cache, [at[fresh[i]["id"]] for i in samples[s]], truth, s, ev, e_truth))
        print(f"seed {s}: kept {kept_f1[-1]:.3f}, random {random_f1[-1]:.3f}", flush=True)
    err = np.array([r["first_error_step"] >= 0 for r in fresh])
    line = {"world": name, "pass_rows": args.pass_rows, "pass_labels": metrics[-1]["labels_used"],
            "pass_f1": metrics[-1]["mean_f1_checkpoint"], "fresh_rows": len(fresh), "kept": len(kept),
            "kept_share": len(kept) / len(fresh), "filter_summary": {k: summary.get(k) for k in
                                                                      ("rows_in", "rows_selected", "seconds")},
            "error_share_fresh": float(err.mean()), "error_share_kept": float(err[kept].mean()),
            "kept_f1": kept_f1, "random_f1": random_f1, "diff": [a - b for a, b in zip(kept_f1, random_f1)],
            "seeds": args.seeds, "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    append(args.results, line)
    m, h = mean_interval(line["diff"])
    print(f"{name}: kept {len(kept)}/{len(fresh)} ({line['kept_share']:.0%}); F1 kept {np.mean(kept_f1):.3f} vs "
          f"random {np.mean(random_f1):.3f} (diff {m:+.3f} ± {h:.3f})", flush=True)


if __name__ == "__main__":
    main()
