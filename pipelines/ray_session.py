"""Joining a Ray cluster, the same way in every recipe."""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None) -> None:
    """Join ADDRESS, else RAY_ADDRESS / a `ray start` cluster, else start a local Ray on this machine."""
    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=False)
    else:
        # local: no dashboard needed, and keep Ray's own logging out of the summary line
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
