"""`ray job submit` on a real local cluster (`ray start --head` on 127.0.0.1): the filter recipe runs
unchanged as a job. Its own module: no other Ray may be running in this process meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tenacity import retry, retry_if_result, stop_after_attempt, wait_fixed

from actprm.world.arith import Generator

REPO = Path(__file__).resolve().parents[1]


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_the_recipe_runs_under_ray_job_submit_on_a_local_cluster(tmp_path):
    """`ray start --head` on 127.0.0.1 (its own temp dir), `ray job submit --working-dir .`, then its processes stopped."""
    rows = list(Generator(seed=5).rows(0, 300))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in (0, 1):
        pq.write_table(pa.Table.from_pylist(rows[k * 150:(k + 1) * 150]), corpus / f"part-{k}.parquet")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"rjt{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    # every port of its own: another Ray on the machine (a user's, a benchmark's) holds the defaults, e.g.
    # the dashboard agent's 52365, and a job agent that cannot bind makes every submit fail
    gcs, dash, agent, agent_grpc, env_agent, metrics = free_ports(6)
    ray_bin = str(bin_dir / "ray")
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                    "--num-cpus", "2", "--temp-dir", str(temp), "--include-dashboard", "true",
                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                    "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                    "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
                    "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        out = tmp_path / "f"
        # the job agent can come up a few seconds after `ray start` returns on a busy machine
        @retry(retry=retry_if_result(lambda p: p.returncode != 0 and "No available agent" in p.stderr),
               stop=stop_after_attempt(30), wait=wait_fixed(2), retry_error_callback=lambda s: s.outcome.result())
        def submit():
            return subprocess.run([ray_bin, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir",
                                   str(REPO), "--", "python", "-m", "pipelines.filter", "--input",
                                   str(corpus), "--output", str(out), "--no-progress"],
                                  check=False, env=env, capture_output=True, text=True, timeout=300)

        job = submit()
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "filter: 300 rows read, 300 scored" in job.stdout
        assert sorted(r["id"] for r in pq.read_table(out / "scored").to_pylist()) == sorted(r["id"] for r in rows)
    finally:
        stop_cluster(temp)


def stop_cluster(temp: Path) -> None:
    """Kill this cluster's processes only (their command lines name its temp dir); `ray stop` would
    kill every Ray on the machine, a user's own jobs included."""
    import signal
    import time

    def ours() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, ValueError):
                continue
            if proc.name.isdigit() and str(temp).encode() in cmd and int(proc.name) != os.getpid():
                pids.append(int(proc.name))
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while ours() and time.monotonic() < deadline:
            time.sleep(0.2)
