"""Ctrl-C in the Ray annotate recipe (`actprm annotate --ray`): the driver asks every actor to send
nothing new and to wait for its requests in flight, whose answers reach the cache; exit 130."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]


def test_first_sigint_in_a_ray_job_caches_the_answers_in_flight(served, tmp_path):
    _, fake, server, data = served(n=12, fault_rates={"slow": 1.0}, slow_s=4.0)
    out = tmp_path / "ann"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    job = subprocess.Popen([sys.executable, "-m", "actprm.cli", "annotate", "--ray", "--actors", "2",
                            "--backend", "openai", "--base-url", server.url, "--judge-model", "fake-judge",
                            "--input", str(data), "--output", str(out), "--concurrency", "4", "--no-progress"],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while fake._in_flight < 4:
            assert time.time() < deadline and job.poll() is None, job.communicate()
            time.sleep(0.05)
        job.send_signal(signal.SIGINT)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 130 and "waiting up to 30s" in err, err
    assert fake.requests == 4 == fake.total_paid  # nothing sent after the signal
    with sqlite3.connect(out / "judge_cache.sqlite") as db:  # the actors' segments were merged
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 4
    assert not (out / "annotations").exists()


def _proc_stat(pid):
    """(state, ppid, comm) of a process from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            head, rest = f.read().rsplit(")", 1)
    except OSError:
        return None
    fields = rest.split()
    return fields[0], int(fields[1]), head.split("(", 1)[1]


def _children(pid):
    return {int(p): _proc_stat(p)[2] for p in os.listdir("/proc")
            if p.isdigit() and (_proc_stat(p) or ("", -1))[1] == pid}


def _running(pid):
    st = _proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_driver_takes_its_local_rays_agents_down():
    """kill -9 of a job's driver that started a local Ray (pipelines.ray_session.init_ray, as `filter` does):
    Ray ends its gcs_server and raylet with it, but the raylet's ray::DashboardAgent and ray::RuntimeEnvAgent
    lived on for a minute; now they end within seconds too."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(REPO)}
    code = ("import os, time\nfrom pipelines.ray_session import init_ray\ninit_ray()\n"
            "print(os.getpid(), flush=True)\ntime.sleep(600)\n")
    job = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    agents: dict[int, str] = {}
    try:
        assert job.stdout.readline().strip() == str(job.pid)
        raylet = next(p for p, name in _children(job.pid).items() if name == "raylet")
        deadline = time.time() + 60
        while len(agents) < 2:
            assert time.time() < deadline, _children(raylet)
            agents = {p: n for p, n in _children(raylet).items() if n.startswith("ray::") and "IDLE" not in n}
            time.sleep(0.2)
        job.kill()
        job.wait()
        deadline = time.time() + 15
        while any(_running(p) for p in agents) and time.time() < deadline:
            time.sleep(0.2)
        assert not [n for p, n in agents.items() if _running(p)], agents
    finally:
        job.kill()
        for p in agents:  # what the test started, should it fail
            if _running(p):
                os.kill(p, signal.SIGKILL)
