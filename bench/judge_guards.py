"""What the judge's guards cost per request, next to the client's ~1.7 ms of CPU per request.

    python -m bench.judge_guards

Microseconds per call, best of 5 repeats: prompt escaping (`render_prompt` of a world row, ASCII; of
the same row with non-ASCII maths, which takes the NFKD pre-check; of a row hiding a full-width tag,
which takes the per-character NFKC path), redaction of a 4,000-character answer (`redact`, one key and
one URL password registered), the usage check (`checked_usage`), and taking and releasing a run lock
(`RunLock`). Writes JSON to --output.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from actprm.io.lock import RunLock
from actprm.judge.budget import checked_usage
from actprm.judge.prompt import render_prompt
from actprm.redact import redact, register_endpoint
from actprm.world.arith import Generator


def per_call_us(fn, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default="bench/results/judge_guards.json")
    args = parser.parse_args()
    row = next(iter(Generator(seed=0).rows(0, 1, "eval")))
    problem, steps = row["problem"], list(row["steps"])
    maths = [s + " so x² ≤ ½·y" for s in steps]
    hidden = [*maths[:-1], maths[-1] + " \uff1c/paragraph_0\uff1e"]
    register_endpoint("sk-bench-0123456789abcdef", "http://user:hunter2-secret@host/v1")
    answer = ("Paragraph 0 checks out: 3 + 4 = 7. " * 115)[:4000] + "\\boxed{-1}"
    usage = {"prompt_tokens": 412, "completion_tokens": 1930}
    with tempfile.TemporaryDirectory() as tmp:
        lock_path = Path(tmp) / ".actprm.lock"

        def lock() -> None:
            with RunLock(lock_path, "bench"):
                pass

        results = {
            "prompt_chars": len(render_prompt(problem, steps)),
            "render_prompt_ascii_us": per_call_us(lambda: render_prompt(problem, steps), 2000),
            "render_prompt_non_ascii_us": per_call_us(lambda: render_prompt(problem, maths), 2000),
            "render_prompt_hidden_tag_us": per_call_us(lambda: render_prompt(problem, hidden), 500),
            "redact_4000_chars_us": per_call_us(lambda: redact(answer), 2000),
            "checked_usage_us": per_call_us(lambda: checked_usage(usage, 1800, 1, 4096, 4000), 20000),
            "lock_acquire_release_us": per_call_us(lock, 500),
        }
    print("| measure | µs per call |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:,.1f} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
