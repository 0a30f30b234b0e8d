"""Memory of a long CPU scoring run: the scorer's RSS batch after batch.

    python -m bench.score_memory --dtype bfloat16 --rows 15000            # with actprm's settings
    python -m bench.score_memory --dtype bfloat16 --rows 15000 --no-fixes # oneDNN's default cache, no trim

Scores world rows (actprm.world, seed 7) with the shipped PRM in batches of `--batch-rows` (the filter
actors' batch), one torch thread, and prints the process's RSS (MB) every 4 batches. actprm caps
oneDNN's and ideep's per-shape caches and hands freed pages back after each call (actprm.precision);
`--no-fixes` runs with their default capacities (1,024 each) and no trim, as before. Writes JSON to
--output.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from actprm import precision
from actprm.checkpoint import load_scoring_model
from actprm.scoring import score_trajectories
from actprm.world.arith import Generator


def rss_mb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    ap.add_argument("--rows", type=int, default=15000)
    ap.add_argument("--batch-rows", type=int, default=512)
    ap.add_argument("--no-fixes", action="store_true")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()
    if args.no_fixes:
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = os.environ["LRU_CACHE_CAPACITY"] = "1024"
        precision._malloc_trim.cache_clear()
        precision._malloc_trim = lambda: None  # type: ignore[assignment]
    torch.set_num_threads(1)
    model, tok = load_scoring_model(None, "cpu", None, args.dtype)
    gen = Generator(seed=7)
    trace, start = [], time.perf_counter()
    for k in range(0, args.rows, args.batch_rows):
        rows = list(gen.rows(k, min(k + args.batch_rows, args.rows)))
        score_trajectories(model, tok, [r["problem"] for r in rows], [r["steps"] for r in rows], device="cpu")
        trace.append(rss_mb())
    seconds = time.perf_counter() - start
    result = {"dtype": args.dtype, "fixes": not args.no_fixes, "rows": args.rows, "batch_rows": args.batch_rows,
              "rss_mb": trace, "first": trace[0], "peak": max(trace), "last": trace[-1], "seconds": round(seconds, 1),
              "cpu_bf16": precision.cpu_bf16_support()}
    print(f"{args.dtype}, fixes {'on' if not args.no_fixes else 'off'}: RSS MB every 4 batches {trace[::4]}, "
          f"peak {max(trace)}, {args.rows / seconds:.0f} rows/s")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
