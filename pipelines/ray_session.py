"""Joining a Ray cluster, the same way in every recipe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import ray

from actprm.errors import UserError


def init_ray(address: str | None = None, object_store_mb: int | None = None,
             object_store_set: bool = False) -> None:
    """Join ADDRESS, else RAY_ADDRESS / a `ray start` cluster, else start a local Ray on this machine, with an
    object store of OBJECT_STORE_MB MiB if given (null: Ray's default, 30% of memory). A cluster has its own
    store: OBJECT_STORE_SET (the user asked for a size) with a cluster to join is an error, not a silent no-op."""
    check_object_store(address, object_store_set)
    if ray.is_initialized():
        return
    # ray.init puts its own SIGTERM handler in (a stack dump, then abort): the driver's stays in charge
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=False)
    else:
        # local: no dashboard needed, and keep Ray's own logging out of the summary line
        store = object_store_mb * 2**20 if object_store_mb else None
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, object_store_memory=store)
        start_reaper()
    if threading.current_thread() is threading.main_thread():
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


# Ray takes the gcs_server and raylet of a local Ray down with a killed driver (PR_SET_PDEATHSIG), but the
# raylet's agents (ray::DashboardAgent, ray::RuntimeEnvAgent) outlive it by a minute, stuck reporting the
# raylet's death to the dead GCS. This watcher (stdlib only) notes the raylet's children every second until
# EOF on a pipe only the driver holds (the driver is gone) or the raylet's end, then stops those still there
# (the same pid and start time): SIGTERM, then SIGKILL.
_REAPER = r"""
import os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a closed terminal are the driver's to handle
signal.signal(signal.SIGHUP, signal.SIG_IGN)
raylet = int(sys.argv[1])

def stat(pid):  # (state, ppid, start time) or None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None

def alive(pid, start=None):
    s = stat(pid)
    return s is not None and s[0] not in ("Z", "X") and (start is None or s[2] == start)

children = {}
while alive(raylet):
    for name in os.listdir("/proc"):
        s = stat(name) if name.isdigit() else None
        if s is not None and s[1] == raylet:
            children[int(name)] = s[2]
    ready, _, _ = select.select([0], [], [], 1.0)
    if ready and not os.read(0, 1024):
        break  # the driver is gone
for sig in (signal.SIGTERM, signal.SIGKILL):
    left = [p for p, start in children.items() if alive(p, start)]
    for p in left:
        try:
            os.kill(p, sig)
        except OSError:
            pass
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(p, children[p]) for p in left):
        time.sleep(0.1)
"""
_reapers: list[subprocess.Popen] = []  # their pipes' write ends: open while this process lives


def _raylet_pid() -> int | None:
    """This process's child raylet (the local Ray it started), from /proc."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                comm, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if comm.endswith("(raylet") and int(rest.split()[1]) == os.getpid():
            return int(name)
    return None


def start_reaper() -> None:
    """Take the local Ray's agents down with this driver, however it ends (Linux; see _REAPER)."""
    if not sys.platform.startswith("linux"):
        return
    raylet = _raylet_pid()
    if raylet is None:
        return
    _reapers[:] = [r for r in _reapers if r.poll() is None]  # those of earlier Rays, ended: reaped now
    _reapers.append(subprocess.Popen([sys.executable, "-c", _REAPER, str(raylet)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))


def check_object_store(address: str | None, object_store_set: bool) -> None:
    """--object-store-mb with a cluster to join, or with a Ray already running in this process, is a user error
    (a recipe calls this before it writes anything)."""
    if object_store_set and (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        raise UserError("--object-store-mb sizes the local Ray a job starts; a cluster's store is set where it "
                        "starts (ray start --object-store-memory)")
