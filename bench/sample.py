"""A fixed, stratified sample of the published ProcessBench files (deterministic).

    python -m bench.sample --n 400 --output bench/data/processbench_400.json

Per subset, n/4 records chosen with a seeded RNG, half with an error label and half
all-correct where the subset allows; written as a ProcessBench-format JSON array.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

PROCESSBENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "processbench"
SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")


def stratified_sample(n: int, seed: int = 0, data: Path = PROCESSBENCH) -> list[dict]:
    per = n // len(SUBSETS)
    rng = random.Random(seed)
    out: list[dict] = []
    for subset in SUBSETS:
        records = json.loads((data / f"{subset}.json").read_text(encoding="utf-8"))
        wrong = [r for r in records if r["label"] != -1]
        right = [r for r in records if r["label"] == -1]
        k_wrong = min(len(wrong), per // 2)
        chosen = rng.sample(wrong, k_wrong) + rng.sample(right, min(len(right), per - k_wrong))
        out.extend(sorted(chosen, key=lambda r: r["id"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    rows = stratified_sample(args.n, args.seed)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(rows)} rows -> {args.output}")


if __name__ == "__main__":
    main()
