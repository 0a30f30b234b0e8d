"""Scoring throughput of the ensemble PRM (issue: foundation part 2).

    python -m bench.score_throughput                      # CPU, `small` preset, 400-row ProcessBench sample
    python -m bench.score_throughput --device cuda --preset qwen2-0.5b --dtype bfloat16 --batch-tokens 65536

Measures, on a fixed stratified sample of the ProcessBench files (bench/sample.py):
  1. batched scoring (sorted by length, packed to --batch-tokens, all steps in one pass)
     against the naive way many PRM scripts score: one forward pass per step prefix at
     batch size 1 (on --naive-rows of the sample, the same rows for both);
  2. K=32 heads against K=1 on the same backbone (time ratio);
  3. padding efficiency (real tokens / computed tokens);
  4. the same rows at several --batch-tokens (on CPU the smallest waste least on padding);
  5. achieved FLOP/s = 2 · backbone parameters · real tokens / forward time, against the
     matmul peak measured in the same run (fp32 on CPU, bf16 on GPU).
Prints a Markdown table and writes JSON to --output.

    python -m bench.score_throughput --dtype both                          # `small` preset, fp32 vs bf16
    python -m bench.score_throughput --dtype both --model shipped --data world --rows 3000

`--dtype both` instead scores the same rows in float32 and in bfloat16, alternating
`--repeats` times (best time of each kept; a shared machine's noise hits both alike), and reports
both rows/s, the speed-up, the largest step-mean difference, and matmul FLOP/s against the best
matmul peak of the machine (a 4096² matmul in each dtype, the larger kept), and whether the CPU
has AMX / AVX512-BF16 (actprm.precision). `--model shipped` (or a PRM directory) scores with that
PRM instead of a preset, `--data world` on arithmetic-world rows instead of ProcessBench.
`--old-path` adds bf16 with the step features' LM-head product in float32 (the older path).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from actprm.model import count_parameters, default_prm_path, init_model, load_prm
from actprm.precision import cpu_bf16_support
from actprm.scoring import (
    ScoringStats,
    default_batch_tokens,
    score_naive_prefixes,
    score_trajectories,
)
from bench.gpu_mfu import matmul_peak
from bench.gpu_mfu import sync as _sync
from bench.sample import stratified_sample


def timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def load_rows(data: str, n: int, processbench: str | None = None) -> tuple[list[str], list[list[str]]]:
    if data == "world":
        from actprm.world.arith import Generator

        rows = list(Generator(seed=0).rows(0, n))
    else:
        rows = stratified_sample(n, seed=0, **({"data": Path(processbench)} if processbench else {}))
    return [r["problem"] for r in rows], [r["steps"] for r in rows]


def load_model(args, dtype: torch.dtype):
    if args.model:
        path = default_prm_path() if args.model == "shipped" else args.model
        return load_prm(path, device=args.device, dtype=dtype)
    return init_model(args.preset, n_heads=8, seed=0, dtype=dtype, device=args.device)


def matmul_flops(model, encoded) -> int:
    """Multiply-add FLOPs of a forward over `encoded`: 2 x (backbone weights less the input embedding)
    per token, plus 2 x hidden x vocabulary per step token when the heads read LM-head step features."""
    emb = model.backbone.get_input_embeddings().weight
    weights = count_parameters(model.backbone) - emb.numel()
    tokens = sum(len(e) for e in encoded if e.error is None)
    flops = 2 * weights * tokens
    if getattr(model, "step_features", ()):
        step_tokens = sum(e.sep_positions[-1] + 1 - e.answer_start - len(e.sep_positions)
                          for e in encoded if e.error is None and e.sep_positions)
        flops += 2 * emb.numel() * step_tokens
    return flops


def compare_dtypes(args) -> None:
    """fp32 and bf16 (and with --old-path, the pre-issue-23 scorer) on the same rows, alternating."""
    import numpy as np

    from actprm.scoring import TrajectoryEncoder

    problems, steps = load_rows(args.data, args.rows, args.processbench)
    peaks = {name: matmul_peak(args.device, getattr(torch, name), n=4096, repeats=3)
             for name in ("float32", "bfloat16")}
    variants = {"float32": (torch.float32, False), "bfloat16": (torch.bfloat16, False)}
    if args.old_path:  # the float32 scorer is the old one; with step features, bf16 with their old LM head too
        variants = {"float32": (torch.float32, True), "bfloat16, float32 LM-head features": (torch.bfloat16, True),
                    "bfloat16": (torch.bfloat16, False)}
    models = {name: load_model(args, dt) for name, (dt, _) in variants.items()}
    for name, (_, old) in variants.items():
        models[name][0].reference_features = old  # actprm.model: the log_softmax step features of before
    model, tok = next(iter(models.values()))
    encoded = TrajectoryEncoder(tok, max_length=model.max_length).encode(problems, steps)
    flops = matmul_flops(model, encoded)
    kw = {"batch_tokens": args.batch_tokens or default_batch_tokens(args.device), "device": args.device}
    for m, t in models.values():
        score_trajectories(m, t, problems[:16], steps[:16], **kw)  # warm-up
    best: dict[str, float] = {}
    forward: dict[str, float] = {}
    cpu: dict[str, float] = {}  # process CPU seconds: less hit than wall time by others' load on a shared machine
    scores: dict[str, list] = {}
    for _ in range(args.repeats):
        for name, (m, t) in models.items():
            stats = ScoringStats()
            cpu0 = time.process_time()
            res, sec = timed(lambda m=m, t=t, stats=stats: score_trajectories(m, t, problems, steps, stats=stats, **kw),
                             args.device)
            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - cpu0)
            if sec < best.get(name, float("inf")):
                best[name], forward[name] = sec, stats.seconds_forward
            scores[name] = [r.probs.mean(axis=1) for r in res if r.error is None]
    ref = scores["float32"]
    diff = {name: max((float(np.abs(a - b).max()) for a, b in zip(ref, s) if len(a)), default=0.0)
            for name, s in scores.items()}
    peak = max(peaks.values())
    base = "float32"
    report = {
        "machine": {"device": args.device, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "cpu_bf16": cpu_bf16_support(),
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "config": vars(args), "rows": len(problems), "matmul_flops": flops, "matmul_peak_flops_per_s": peaks,
        "variants": {name: {"seconds": best[name], "rows_per_s": len(problems) / best[name],
                            "forward_seconds": forward[name], "speedup": best[base] / best[name],
                            "cpu_seconds": cpu[name], "cpu_speedup": cpu[base] / cpu[name],
                            "flops_per_s": flops / forward[name], "fraction_of_peak": flops / forward[name] / peak,
                            "max_step_mean_diff_vs_float32": diff[name]} for name in models},
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    what = args.model or f"{args.preset} preset"
    print(f"{what}, {args.data} rows x {len(problems)}, {args.device} ({_cpu_name()}), "
          f"{torch.get_num_threads()} threads, CPU bf16: {cpu_bf16_support() or 'none'}; matmul peak fp32 "
          f"{peaks['float32'] / 1e9:,.0f} / bf16 {peaks['bfloat16'] / 1e9:,.0f} GFLOP/s; best of {args.repeats}")
    print()
    print(f"| scorer | rows/s | speed-up vs {base} | CPU-time speed-up | forward GFLOP/s (share of the "
          f"{peak / 1e9:,.0f} peak) | max step-mean diff vs float32 |")
    print("|---|---|---|---|---|---|")
    for name, r in report["variants"].items():
        print(f"| {name} | {r['rows_per_s']:,.1f} | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
              f"{r['flops_per_s'] / 1e9:,.1f} "
              f"({r['fraction_of_peak']:.0%}) | {r['max_step_mean_diff_vs_float32']:.1e} |")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--naive-rows", type=int, default=40, help="rows for the naive-vs-batched comparison")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "both"],
                        help="both: the fp32-vs-bf16 comparison only")
    parser.add_argument("--model", default=None, help="--dtype both: 'shipped' or a PRM directory (default: --preset)")
    parser.add_argument("--data", default="processbench", choices=["processbench", "world"])
    parser.add_argument("--processbench", default=None, help="--dtype both: the ProcessBench directory "
                        "(default: ../shared/data/processbench next to the checkout)")
    parser.add_argument("--repeats", type=int, default=3, help="--dtype both: timed passes per variant")
    parser.add_argument("--old-path", action="store_true", help="--dtype both: add the pre-issue-23 scorer")
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the score job's for the device")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results/score_throughput.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.dtype == "both":
        if args.output == parser.get_default("output"):
            args.output = "bench/results/score_dtypes.json"
        return compare_dtypes(args)
    dtype = getattr(torch, args.dtype)
    rows = stratified_sample(args.rows, seed=0)
    problems, steps = [r["problem"] for r in rows], [r["steps"] for r in rows]
    stride = max(1, len(rows) // args.naive_rows)
    sub = list(range(0, len(rows), stride))[: args.naive_rows]
    sub_p, sub_s = [problems[i] for i in sub], [steps[i] for i in sub]

    peak = matmul_peak(args.device, dtype)
    models = {k: init_model(args.preset, n_heads=k, seed=0, dtype=dtype, device=args.device) for k in (1, 32)}
    model, tok = models[32]
    n_params = count_parameters(model.backbone)
    args.batch_tokens = args.batch_tokens or default_batch_tokens(args.device)
    kw = dict(batch_tokens=args.batch_tokens, device=args.device)
    score_trajectories(model, tok, problems[:8], steps[:8], **kw)  # warm-up

    results: dict = {}
    for k in (32, 1):
        m, t = models[k]
        stats = ScoringStats()
        _, seconds = timed(lambda: score_trajectories(m, t, problems, steps, stats=stats, **kw), args.device)
        results[k] = (seconds, stats)
    seconds32, stats32 = results[32]
    seconds1, _ = results[1]

    _, naive_s = timed(lambda: score_naive_prefixes(model, tok, sub_p, sub_s, device=args.device), args.device)
    _, batched_sub_s = timed(lambda: score_trajectories(model, tok, sub_p, sub_s, **kw), args.device)

    sweep = {}
    for budget in (1024, 2048, 4096, 8192, 16384):
        st = ScoringStats()
        _, sec = timed(lambda: score_trajectories(model, tok, sub_p, sub_s, batch_tokens=budget, device=args.device,
                                                  stats=st), args.device)
        sweep[budget] = {"seconds": sec, "padding_efficiency": st.padding_efficiency, "over_naive": naive_s / sec}

    flops = 2 * n_params * stats32.real_tokens / stats32.seconds_forward
    report = {
        "machine": {"device": args.device, "cpu": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "config": vars(args) | {"backbone_parameters": n_params},
        "rows": len(rows), "tokens": stats32.real_tokens, "steps": stats32.n_scored_steps,
        "batched_seconds_k32": seconds32, "batched_traj_per_s": len(rows) / seconds32,
        "batched_tokens_per_s": stats32.real_tokens / seconds32,
        "k1_seconds": seconds1, "k32_over_k1": seconds32 / seconds1,
        "naive_rows": len(sub), "naive_seconds": naive_s, "batched_seconds_same_rows": batched_sub_s,
        "batched_over_naive_traj_per_s": naive_s / batched_sub_s,
        "padding_efficiency": stats32.padding_efficiency,
        "forward_flops_per_s": flops, "matmul_peak_flops_per_s": peak, "fraction_of_peak": flops / peak,
        "forward_passes": stats32.n_forward, "max_batch_size": stats32.max_batch_size,
        "batch_tokens_sweep_same_rows": sweep,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")

    print(f"| measure ({args.preset}, {args.device}, {args.dtype}, {torch.get_num_threads()} threads) | value | target |")
    print("|---|---|---|")
    print(f"| batched vs naive prefix scoring, trajectories/s ({len(sub)} rows) | "
          f"{report['batched_over_naive_traj_per_s']:.1f}x | >= 4x |")
    print(f"| K=32 time / K=1 time ({len(rows)} rows) | {report['k32_over_k1']:.3f} | <= 1.10 |")
    print(f"| padding efficiency | {report['padding_efficiency']:.3f} | >= 0.90 |")
    print(f"| batched throughput | {report['batched_traj_per_s']:.2f} traj/s, "
          f"{report['batched_tokens_per_s']:,.0f} tok/s | |")
    print(f"| forward FLOP/s (2·N·tokens/time) vs matmul peak | {flops / 1e9:.1f} / {peak / 1e9:.1f} GFLOP/s "
          f"= {report['fraction_of_peak']:.0%} | report |")
    print()
    print(f"| --batch-tokens ({len(sub)} rows) | seconds | padding efficiency | vs naive |")
    print("|---|---|---|---|")
    for budget, r in sweep.items():
        print(f"| {budget} | {r['seconds']:.2f} | {r['padding_efficiency']:.3f} | {r['over_naive']:.1f}x |")


if __name__ == "__main__":
    main()
