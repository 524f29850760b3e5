"""A resume continues the run that was started: config.yaml, written once at its start, against the new config.

Keys that only say how long or where the run goes on (ALWAYS_ALLOWED) may change; a change to any other key (lr,
epochs, seed, partition, data, model, optimizer, loss, strategy, ...) would make the resumed rounds another
experiment, and is refused, naming each key old -> new, unless `resume_allow_changes=[key, ...]` lists it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedmemes.bookkeeping import run_config
from fedmemes.models.old_targets import upgrade_targets
from fedmemes.tracking.base import flatten

# Run length and operations: where files, caches, logs, dashboards and Flower's processes are; how long to wait.
# A key allows every key under it (`simulation` allows simulation.client_cpus).
ALWAYS_ALLOWED = (
    "num_rounds",  # run length: continue a finished run for more rounds
    "server.patience",  # run length
    "server.round_timeout",
    "server.dp.max_epsilon",  # the privacy budget may be raised (README, Differential privacy)
    "resume",
    "resume_allow_changes",
    "overwrite",
    "run_dir",
    "cache_dir",
    "verbose",
    "device",
    "logger",  # experiment trackers only report
    "personalization.eval_every",  # per-member scoring only reports
    "personalization.export_dir",  # where clients write their own models
    "simulation",  # resources and the Ray cluster
    "server.address",
    "server.control_port",
    "server.insecure",
    "server.superlink",
    "server.certs",
    "server.supernode_auth",
    "server.authorized_keys",
    "server.flwr_home",
    "server.status_host",
    "server.status_port",
    "server.heartbeat_s",
    "server.token_file",
)


class ResumeRefused(ValueError):
    """A resume whose config changes what the run computes: the message names the keys and the way on."""


def _allowed(key: str, allowed: tuple[str, ...]) -> bool:
    return any(key == a or key.startswith(f"{a}.") for a in allowed)


def changes(original: dict[str, Any], new: dict[str, Any], allow: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Return 'key: old -> new' for each leaf of `original` that differs and is neither always allowed nor listed in
    `allow`. A key the original lacks is not compared: fedmemes added it after the run started, with the behaviour of
    before as its default (a group swapped for another still changes its `_target_`)."""
    old_flat, new_flat = flatten(original), flatten(new)
    allowed = (*ALWAYS_ALLOWED, *allow)
    return [
        f"{key}: {old} -> {new_flat.get(key, '(absent)')}"
        for key, old in sorted(old_flat.items())
        if new_flat.get(key, "(absent)") != old and not _allowed(key, allowed)
    ]


def check(run_dir: Path, cfg: DictConfig) -> None:
    """Raise ResumeRefused when `cfg` changes a result-altering key of RUN/config.yaml (the original, read as data)."""
    if not (Path(run_dir) / run_config.CONFIG_FILE).is_file():
        return  # a run stopped before it wrote its config: the checkpoint's own checks (check_fits) stand alone
    original = run_config.read(run_dir)  # a run folder is data: RunConfigError names a key that could run code
    new = upgrade_targets(OmegaConf.to_container(cfg, resolve=True))  # as read() upgrades the original's moved paths
    allow = [str(k) for k in (cfg.get("resume_allow_changes") or [])]
    found = changes(original, new, allow)
    if found:
        keys = ",".join(k.split(":", 1)[0] for k in found)
        raise ResumeRefused(
            f"resume={run_dir}: this configuration changes what the run computes ({'; '.join(found)}); resume with "
            f"the values of its config.yaml, add resume_allow_changes=[{keys}] to continue with the new values, or "
            "start a new run in another directory"
        )
