"""Judge client throughput and fault tolerance (issue: the OpenAI-compatible judge).

    python -m bench.judge_throughput                       # both runs, 3200 + 2000 world rows
    python -m bench.judge_throughput --rows 6400 --concurrency 64 --skip-faults

The stand-in judge (actprm.testing.judge_server) runs as a separate process, answering every
request after --delay seconds (200 ms). `actprm annotate --backend openai` (run_annotate, the
same code path as the CLI, answer cache included) labels world rows against it:

1. clean run: requests/s against the bound concurrency / delay (64 / 0.2 s = 320 req/s), and
   the CPU seconds of the client and of the server process (the two share this machine's cores);
2. fault run: 20% 429 (Retry-After: 1), 10% 500, 5% hangs past the client's timeout, 10%
   malformed bodies: rows labelled, failed, lost (input ids without exactly one annotation
   row; must be 0) and calls per label.

Prints a Markdown table and writes JSON to --output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from actprm.config import AnnotateConfig
from actprm.world.arith import Generator
from pipelines.annotate import run as run_annotate


def start_server(rows: int, delay: float, fault_rates: str | None, hang: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "actprm.testing.judge_server", "--delay", str(delay), "--world-rows", str(rows),
           "--hang", str(hang)]
    if fault_rates:
        cmd += ["--fault-rates", fault_rates]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()  # "listening on URL"
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"the judge server did not start: {line!r}")
    return proc, line.split()[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(rows: int, concurrency: int, delay: float, faults: str | None, timeout: float, work: Path) -> dict:
    data = work / f"world-{rows}.parquet"
    if not data.exists():
        pq.write_table(pa.Table.from_pylist(list(Generator(seed=0).rows(0, rows))), data)
    server, url = start_server(rows, delay, faults, hang=timeout * 2)
    try:
        out = work / ("faults" if faults else "clean")
        cfg = AnnotateConfig(input=[str(data)], output=str(out), overwrite=True, backend="openai", base_url=url,
                             judge_model="fake-judge", concurrency=concurrency, timeout_s=timeout,
                             max_attempts=6, max_backoff_s=2.0, batch_rows=rows)
        me, srv = os.getpid(), server.pid
        cpu0, scpu0, t0 = cpu_seconds(me), cpu_seconds(srv), time.perf_counter()
        result = run_annotate(cfg, progress=False)
        wall = time.perf_counter() - t0
        cpu, scpu = cpu_seconds(me) - cpu0, cpu_seconds(srv) - scpu0
    finally:
        server.kill()
    annotations = pq.read_table(out / "annotations", columns=["id", "error"]).to_pylist()
    seen = Counter(r["id"] for r in annotations)
    ids = pq.read_table(data, columns=["id"]).column("id").to_pylist()
    lost = sum(1 for i in ids if seen[i] != 1) + sum(1 for i in seen if i not in set(ids))
    stats = result.judge_stats
    failures = Counter(r["error"].split(":", 1)[0] for r in annotations if r["error"])
    return {
        "rows": rows, "concurrency": concurrency, "delay_s": delay, "faults": faults or "none",
        "wall_s": round(wall, 2), "requests": stats.requests, "requests_per_s": round(stats.requests / wall, 1),
        "labels_per_s": round(result.annotations.labelled / wall, 1),
        "bound_req_per_s": round(concurrency / delay, 1),
        "share_of_bound": round(stats.requests / wall / (concurrency / delay), 3),
        "client_cpu_s": round(cpu, 2), "server_cpu_s": round(scpu, 2),
        "client_cpu_share": round(cpu / wall, 3), "server_cpu_share": round(scpu / wall, 3),
        "labelled": result.annotations.labelled, "failed": result.annotations.n_failed,
        "failures": dict(failures), "lost": lost,
        "calls_per_label": round(stats.requests / max(result.annotations.labelled, 1), 3),
        "retries": dict(stats.retries), "max_in_flight": stats.max_in_flight,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=3200, help="rows of the clean run")
    p.add_argument("--fault-rows", type=int, default=2000, help="rows of the fault run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--delay", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=2.0, help="client timeout (hangs last twice this)")
    p.add_argument("--skip-faults", action="store_true")
    p.add_argument("--output", default="bench/results/judge_throughput.json")
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run(args.rows, args.concurrency, args.delay, None, args.timeout, Path(tmp)))
        if not args.skip_faults:
            results.append(run(args.fault_rows, args.concurrency, args.delay,
                               "429=0.2,500=0.1,hang=0.05,malformed=0.1", args.timeout, Path(tmp)))
    print("| run | rows | req/s | bound | share | client CPU | server CPU | labelled | failed | lost | calls/label |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['faults']} | {r['rows']} | {r['requests_per_s']} | {r['bound_req_per_s']} | "
              f"{r['share_of_bound']:.0%} | {r['client_cpu_share']:.0%} | {r['server_cpu_share']:.0%} | "
              f"{r['labelled']} | {r['failed']} | {r['lost']} | {r['calls_per_label']} |")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"cpus": os.cpu_count(), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
