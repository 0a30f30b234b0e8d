"""Joining a Ray cluster, the same way in every recipe."""

from __future__ import annotations

import os

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
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, log_to_driver=False)
    else:
        # local: no dashboard needed, and keep Ray's own logging out of the summary line
        store = object_store_mb * 2**20 if object_store_mb else None
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, object_store_memory=store)


def check_object_store(address: str | None, object_store_set: bool) -> None:
    """--object-store-mb with a cluster to join, or with a Ray already running in this process, is a user error
    (a recipe calls this before it writes anything)."""
    if object_store_set and (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized()):
        raise UserError("--object-store-mb sizes the local Ray a job starts; a cluster's store is set where it "
                        "starts (ray start --object-store-memory)")
