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
