"""Attach a simulation to an existing Ray cluster (`simulation.ray_address` or Ray's own RAY_ADDRESS)."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

# What the ClientApps need from the driver's environment. Actors of a cluster started with
# `ray start` are children of that cluster's raylet, not of this process: they inherit nothing
# unless it travels in the job's runtime_env.
FORWARDED_ENV = (
    "FEDMEMES_OVERRIDES",
    "FEDMEMES_CACHE",
    "TRANSFORMERS_VERBOSITY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


def ray_address(configured: str | None) -> str | None:
    """Return the cluster to attach to: the config's address, else RAY_ADDRESS, else None (a private Ray)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


def attach(address: str, verbose: bool = False) -> None:
    """Connect this driver to the Ray cluster at `address`, forwarding PYTHONPATH and our settings to its workers.

    Flower's Ray backend skips its own `ray.init` when Ray is already initialised, so the run's
    actors start on the cluster's nodes with these environment variables.
    """
    import ray

    pythonpath = os.pathsep.join(
        [p for p in sys.path if p] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    )
    env = {"PYTHONPATH": pythonpath, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    try:
        ray.init(
            address=address,
            runtime_env={"env_vars": env},
            include_dashboard=False,
            logging_level=logging.INFO if verbose else logging.ERROR,
            log_to_driver=verbose,
        )
    except ConnectionError as e:
        raise SystemExit(
            f"error: no Ray cluster at simulation.ray_address={address} ({e}); start one with "
            "`ray start --head --port=6379` and pass its address, or set simulation.ray_address=null"
        ) from None
    resources = ray.cluster_resources()
    log.info(
        "attached to the Ray cluster at %s: %d nodes, %.0f CPUs, %.0f GPUs",
        address,
        len([n for n in ray.nodes() if n.get("Alive")]),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )
