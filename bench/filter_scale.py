"""Corpus scale: `actprm filter` (Ray) on world corpora of growing size, against in-process `actprm score`.

    python -m bench.filter_scale --rows 10000 100000            # filter at each size
    python -m bench.filter_scale --rows 100000 --in-process     # and `actprm score` on the same rows

For each size: a world corpus (`actprm generate`, 50k-row shards, cached under --work) goes through
`actprm filter` with the shipped PRM in a subprocess. Measured: wall time, rows/s, and the job's
peak memory, defined as the largest sum, over 0.5 s samples, of the resident set sizes of the
job's whole process tree (the driver and the local Ray it starts: GCS, raylet, workers and
actors; pages of the shared-memory object store count in every process that maps them, so this
over-counts rather than misses), with its split by role at that moment (driver, scoring actors, other
Ray workers, Ray's core processes) and each role's own largest sum. Beside it, the peak of the summed
PSS (proportional set size, sampled every 5 s: a shared page counts once over all the processes that
map it, so the sum is the memory the job really holds) and, per role, what the RSS is made of
(anonymous memory vs shared-memory pages of the object store), with a timeline every --timeline-s
seconds to show what grows, and each scoring actor's CPU seconds (`actor_cpu_s`: whether every actor
scored). Results are appended to --output (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def role(pid: int, root: int) -> str:
    """What a process of the job is: the driver, a scoring actor, another Ray worker (read tasks, idle
    workers, Ray Data's own actors) or Ray's core processes (GCS, raylet, dashboard, agents)."""
    if pid == root:
        return "driver"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "ray core"
    if "PRMScorer" in cmd:
        return "actors"
    return "workers" if cmd.startswith("ray::") else "ray core"


STATUS = {"VmRSS:": "rss", "RssAnon:": "anon", "RssShmem:": "shmem"}  # cheap: every sample
ROLLUP = {"Pss:": "pss"}  # /proc/PID/smaps_rollup walks the page tables: every few seconds


def memory(pid: int, with_pss: bool) -> dict[str, int]:
    """RSS, anonymous memory and shared-memory pages of one process (and its PSS if `with_pss`), in bytes;
    empty if the process is gone."""
    out = {}
    for name, fields in (("status", STATUS), ("smaps_rollup", ROLLUP)) if with_pss else (("status", STATUS),):
        try:
            text = Path(f"/proc/{pid}/{name}").read_text()
        except OSError:
            return {}
        for line in text.splitlines():
            parts = line.split()
            if parts and parts[0] in fields:
                out[fields[parts[0]]] = int(parts[1]) * 1024
    return out


TICK = os.sysconf("SC_CLK_TCK")


def tree_memory(root: int, with_pss: bool, actor_cpu: dict[int, float] | None = None) -> dict[str, dict[str, int]]:
    """Memory of `root` and all its descendants (Linux /proc), summed by role: {role: {rss, anon, shmem, pss}}.
    Each scoring actor's CPU seconds so far go into `actor_cpu` (pid -> s): whether every actor scored."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry))
        cpu[int(entry)] = (int(stat[11]) + int(stat[12])) / TICK  # utime + stime
    by_role: dict[str, dict[str, int]] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        who = role(pid, root)
        sums = by_role.setdefault(who, dict.fromkeys([*STATUS.values(), *ROLLUP.values()], 0))
        for k, v in memory(pid, with_pss).items():
            sums[k] += v
        if who == "actors" and actor_cpu is not None:
            actor_cpu[pid] = cpu.get(pid, 0.0)
        stack.extend(children.get(pid, []))
    return by_role


def mb(by_role: dict[str, dict[str, int]], key: str) -> dict[str, int]:
    return {r: round(m[key] / 2**20) for r, m in sorted(by_role.items())}


def measure(cmd: list[str], timeline_s: float = 60.0, pss_every_s: float = 5.0) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak, at_peak, most, peak_pss, at_peak_pss = 0, {}, {}, 0, {}
    timeline, next_mark, next_pss, actor_cpu = [], 0.0, 0.0, {}
    while proc.poll() is None:
        elapsed = time.perf_counter() - start
        with_pss = elapsed >= next_pss
        sample = tree_memory(proc.pid, with_pss, actor_cpu)
        rss = sum(m["rss"] for m in sample.values())
        if rss > peak:
            peak, at_peak = rss, sample
        for k, m in sample.items():
            most[k] = max(most.get(k, 0), m["rss"])
        if with_pss:
            next_pss += pss_every_s
            pss = sum(m["pss"] for m in sample.values())
            if pss > peak_pss:
                peak_pss, at_peak_pss = pss, sample
        if elapsed >= next_mark:
            timeline.append({"s": round(elapsed), "rss_mb": mb(sample, "rss"), "anon_mb": mb(sample, "anon"),
                             "shmem_mb": mb(sample, "shmem")})
            next_mark += timeline_s
        time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode})")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak / 2**20),
            "at_peak_mb": mb(at_peak, "rss"), "at_peak_anon_mb": mb(at_peak, "anon"),
            "at_peak_shmem_mb": mb(at_peak, "shmem"),
            "most_by_role_mb": {k: round(v / 2**20) for k, v in sorted(most.items())},
            "peak_pss_mb": round(peak_pss / 2**20), "at_peak_pss_mb": mb(at_peak_pss, "pss"),
            "actor_cpu_s": sorted((round(v, 1) for v in actor_cpu.values()), reverse=True),
            "timeline": timeline, "summary_line": out.strip().splitlines()[-1]}


def corpus(work: Path, rows: int) -> Path:
    path = work / f"world-{rows}"
    if not (path / "_world.json").exists():
        subprocess.run([sys.executable, "-m", "actprm.cli", "generate", "--n", str(rows), "--shard-rows", "50000",
                        "--output", str(path), "--overwrite", "--no-progress"], check=True, cwd=REPO)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--in-process", action="store_true", help="also run actprm score on the same rows")
    p.add_argument("--actors", type=int, help="filter: scoring actors (default: the recipe's)")
    p.add_argument("--cpus-per-actor", type=float, help="filter: CPUs per scoring actor (default: the recipe's)")
    p.add_argument("--model", help="filter: the PRM directory (default: the shipped world PRM)")
    p.add_argument("--object-store-mb", type=int, help="filter: the local Ray's object store (default: the recipe's)")
    p.add_argument("--timeline-s", type=float, default=60.0, help="seconds between the timeline's samples")
    p.add_argument("--work", default="/tmp/actprm-filter-bench")
    p.add_argument("--output", default="bench/results/filter_scale.jsonl")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for rows in args.rows:
        data = corpus(work, rows)
        filter_args = ([f"--actors={args.actors}"] if args.actors else []) + (
            [f"--cpus-per-actor={args.cpus_per_actor}"] if args.cpus_per_actor else []) + (
            [f"--object-store-mb={args.object_store_mb}"] if args.object_store_mb else []) + (
            [f"--model={args.model}"] if args.model else [])
        jobs = [("filter", ["filter", "--input", str(data), "--output", str(work / f"filter-{rows}"), *filter_args])]
        if args.in_process:
            jobs.append(("score", ["score", "--input", str(data), "--output", str(work / f"score-{rows}")]))
        for name, verb in jobs:
            result = measure([sys.executable, "-m", "actprm.cli", *verb, "--overwrite", "--no-progress"], args.timeline_s)
            result |= {"job": name, "rows": rows, "args": filter_args if name == "filter" else [], "rows_per_s": round(rows / result["wall_s"], 1),
                       "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
            print(json.dumps(result), flush=True)
            with open(args.output, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
