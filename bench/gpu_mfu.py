"""bf16 scoring throughput and MFU of a Qwen2-0.5B-shaped PRM on one GPU, in a few minutes.

    python -m bench.gpu_mfu                                   # CUDA, `qwen2-0.5b` preset, bf16
    python -m bench.gpu_mfu --device cpu --preset tiny --tokens 20000 --seconds 5    # the CPU check

Needs torch, transformers and numpy only (the package's base install): no Ray, no vLLM, no data, nothing
downloaded. The model is the
`qwen2-0.5b` preset (actprm.model.PRESETS: hidden 896, 24 layers, 14/2 heads, intermediate 4864)
with random weights and K=8 heads, its vocabulary the committed 4,096-token tokenizer's. Rows are
synthetic token sequences (uniform lengths in [--min-len, --max-len], a step separator every
--step-len tokens), scored by the project's scorer (actprm.scoring.score_encoded: length-sorted
micro-batches of --batch-tokens padded tokens, all heads, probabilities back on the host), so the
figure is the scorer's, host side included, not a bare forward pass.

MFU = model FLOP/s / peak. Model FLOPs: 2 x (backbone weights less the input embedding) per real
token, plus causal attention (QKᵀ and AV over the lower triangle): 2 x layers x hidden x T² per row
of T tokens. Padding is not counted as work. The peak is `--peak-tflops` (default 989: the H100/H200 SXM dense BF16
figure, without sparsity; an H200 NVL is 835), and a 8192² bf16 matmul is measured in the same run
as the achievable peak. Prints a table and writes JSON to --output; one pass takes seconds on an
H200, the whole script well under 5 minutes (model build ~10 s, warm-up, --repeats passes, capped
by --seconds).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from actprm.model import count_parameters, init_model
from actprm.scoring import EncodedTrajectory, ScoringStats, score_encoded


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best FLOP/s of an n×n matmul on this device and thread count."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synthetic_rows(n_tokens: int, vocab: int, sep_id: int, min_len: int, max_len: int, step_len: int,
                   seed: int = 0) -> list[EncodedTrajectory]:
    rng = np.random.default_rng(seed)
    rows, total = [], 0
    while total < n_tokens:
        length = int(rng.integers(min_len, max_len + 1))
        ids = rng.integers(0, vocab, size=length)
        ids[ids == sep_id] = 0
        answer = length // 4  # a quarter "problem", then steps
        seps = list(range(answer + step_len - 1, length, step_len)) or [length - 1]
        ids[seps] = sep_id
        rows.append(EncodedTrajectory(ids.tolist(), seps, len(seps), answer_start=answer))
        total += length
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="qwen2-0.5b")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--tokens", type=int, default=2_000_000, help="real tokens per timed pass")
    p.add_argument("--min-len", type=int, default=256)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--step-len", type=int, default=48, help="tokens per step (a separator after each)")
    p.add_argument("--batch-tokens", type=int, default=65536, help="padded tokens per micro-batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds", type=float, default=150, help="stop timing passes after this long")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="the accelerator's dense peak in this dtype (989: H100/H200 SXM BF16)")
    p.add_argument("--matmul-n", type=int, default=8192, help="size of the measured matmul peak")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (the CPU check)")
    p.add_argument("--output", default="bench/results/gpu_mfu.json")
    args = p.parse_args()

    start = time.perf_counter()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here (the CPU check: --device cpu --preset tiny --tokens 20000)")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 runs: what a user gets by default on Ampere+
    model, tok = init_model(args.preset, n_heads=8, seed=0, dtype=dtype, device=args.device)
    model.eval()
    cfg = model.backbone.config
    weights = count_parameters(model.backbone) - model.backbone.get_input_embeddings().weight.numel()
    rows = synthetic_rows(args.tokens, len(tok), model.separator_token_id, args.min_len, args.max_len,
                          args.step_len)
    lengths = np.array([len(r) for r in rows])
    real = int(lengths.sum())
    flops = 2 * weights * real + 2 * cfg.num_hidden_layers * cfg.hidden_size * int((lengths.astype(np.int64) ** 2).sum())
    built = time.perf_counter() - start

    peak_measured = matmul_peak(args.device, dtype, args.matmul_n if args.device == "cuda" else 1024)
    score_encoded(model, rows[:64], batch_tokens=args.batch_tokens, device=args.device)  # warm-up (kernels, allocator)
    passes = []
    timing_start = time.perf_counter()
    for _ in range(args.repeats):
        stats = ScoringStats()
        sync(args.device)
        t0 = time.perf_counter()
        out = score_encoded(model, rows, batch_tokens=args.batch_tokens, device=args.device, stats=stats)
        sync(args.device)
        passes.append((time.perf_counter() - t0, stats))
        if time.perf_counter() - timing_start > args.seconds:
            break
    assert all(o is not None and np.isfinite(o).all() for o in out)
    seconds, stats = min(passes, key=lambda x: x[0])
    achieved = flops / seconds
    peak = args.peak_tflops * 1e12
    report = {
        "machine": {"device": args.device, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                    "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "threads": torch.get_num_threads()},
        "config": vars(args), "backbone_weights_less_embedding": weights, "rows": len(rows), "real_tokens": real,
        "padding_efficiency": stats.padding_efficiency, "forward_passes": stats.n_forward,
        "seconds_per_pass": [round(s, 4) for s, _ in passes], "best_seconds": seconds,
        "rows_per_s": len(rows) / seconds, "tokens_per_s": real / seconds, "model_flops": flops,
        "achieved_tflops": achieved / 1e12, "peak_tflops": args.peak_tflops, "mfu": achieved / peak,
        "matmul_tflops_measured": peak_measured / 1e12, "fraction_of_measured_matmul": achieved / peak_measured,
        "build_seconds": built, "total_seconds": time.perf_counter() - start,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    name = report["machine"]["gpu"] or report["machine"]["cpu"]
    print(f"{args.preset} ({weights / 1e6:.1f}M weights less embedding), {args.dtype}, {name}: {len(rows):,} rows, "
          f"{real:,} tokens, padding efficiency {stats.padding_efficiency:.3f}, --batch-tokens {args.batch_tokens}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| scoring throughput (best of {len(passes)}) | {report['rows_per_s']:,.0f} rows/s, "
          f"{report['tokens_per_s']:,.0f} tokens/s |")
    print(f"| model FLOP/s | {achieved / 1e12:,.1f} TFLOP/s |")
    print(f"| MFU vs {args.peak_tflops:g} TFLOP/s dense peak | **{report['mfu']:.1%}** |")
    print(f"| vs a {args.matmul_n if args.device == 'cuda' else 1024}² matmul measured here "
          f"({peak_measured / 1e12:,.1f} TFLOP/s) | {report['fraction_of_measured_matmul']:.1%} |")
    print(f"| whole script | {report['total_seconds']:.0f} s |")


if __name__ == "__main__":
    main()
