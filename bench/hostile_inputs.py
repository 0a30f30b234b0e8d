"""Reading under hostile inputs: peak memory of `actprm validate` on one row nesting 200,000 `[`, and the
readers' throughput on ProcessBench (JSON arrays) and the same rows as JSONL.

    python -m bench.hostile_inputs [--processbench DIR] [--out bench/results/hostile_inputs.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_validate(path: Path, out: Path) -> dict:
    code = ("import resource, sys; from actprm.cli import main; "
            f"rc = main(['validate', '--input', {str(path)!r}, '--output', {str(out)!r}, '--overwrite']); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    return {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(int(proc.stdout.strip().splitlines()[-1]) / 1024, 1) if proc.returncode == 0 else None,
            "summary": proc.stdout.strip().splitlines()[0] if proc.returncode == 0 else proc.stderr[-300:]}


def read_rate(inputs: list[str], repeats: int = 3) -> dict:
    from actprm.io.readers import iter_batches, open_corpus

    best, n = float("inf"), 0
    for _ in range(repeats):
        start, n = time.perf_counter(), 0
        for batch in iter_batches(open_corpus(inputs)):
            n += batch.n_read
        best = min(best, time.perf_counter() - start)
    size = sum(p.stat().st_size for i in inputs for p in ([Path(i)] if Path(i).is_file() else Path(i).glob("*")))
    return {"rows": n, "seconds": round(best, 3), "rows_per_s": round(n / best), "mb_per_s": round(size / best / 1e6, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--processbench", default=str(REPO.parent / "shared" / "data" / "processbench"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "hostile_inputs.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostile-"))
    row = lambda i: {"id": f"t{i}", "problem": f"What is {i} + 1?", "steps": [f"{i} + 1 = {i + 1}"]}
    deep = tmp / "deep.json"
    deep.write_text("[" + json.dumps(row(0)) + ',{"id":"d","problem":"p","steps":["a"],"x":'
                    + "[" * 200_000 + "]" * 200_000 + "}," + json.dumps(row(1)) + "]")
    results = {"deep_row_validate": {"file_bytes": deep.stat().st_size, **peak_validate(deep, tmp / "o")}}
    pb = Path(args.processbench)
    if pb.is_dir():
        rows = [r for f in sorted(pb.glob("*.json")) for r in json.loads(f.read_text())]
        jsonl = tmp / "pb.jsonl"
        with jsonl.open("w") as f:
            for k in range(6):
                for r in rows:
                    f.write(json.dumps(r | {"id": f"{r['id']}-{k}"}) + "\n")
        results["processbench_json_arrays"] = read_rate([str(pb)])
        results["processbench_x6_jsonl"] = read_rate([str(jsonl)])
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
