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
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from actprm.model import count_parameters, init_model
from actprm.scoring import ScoringStats, default_batch_tokens, score_naive_prefixes, score_trajectories
from bench.sample import stratified_sample


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n×n matmul on this device and thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        (a @ b).sum().item()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--naive-rows", type=int, default=40, help="rows for the naive-vs-batched comparison")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-tokens", type=int, default=None, help="default: the score job's for the device")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="bench/results/score_throughput.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
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
