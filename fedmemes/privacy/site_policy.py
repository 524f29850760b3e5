"""A client site's policy: what a run's config may build on this machine, limits no server can raise, what metrics
leave it. Given as `fedmemes client|manager --policy site.yaml`; without one the defaults below apply."""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from fedmemes.models.old_targets import current_target

# Like NVIDIA FLARE's class_allow_list with custom code off: fedmemes' own classes, Flower's strategies and
# partitioners, three torch optimizers. An entry ending in "." is a module prefix (classes defined under it);
# any other entry is an exact `_target_` string.
DEFAULT_TARGETS = (
    "fedmemes.models.",
    "fedmemes.data.",
    "fedmemes.federation.local_objectives.",
    "fedmemes.federation.personalization.",
    "fedmemes.strategies.",
    "fedmemes.tracking.",
    "flwr.serverapp.strategy.",
    "flwr_datasets.partitioner.",
    "torch.optim.Adam",
    "torch.optim.AdamW",
    "torch.optim.SGD",
)
# The metrics a train reply may carry, by the name a policy's `share` uses; num-examples always leaves (every
# strategy weighs by it), and partition_id too (the number the operator gave this client).
SHARE_GROUPS: dict[str, tuple[str, ...]] = {
    "label_counts": ("label_0", "label_1"),
    "modality_counts": ("n_text", "n_image", "n_both"),
    "val_accuracy": ("val_accuracy", "val_n"),
    "train_metrics": ("train_loss", "train_accuracy"),
    "member_auroc": ("global_auroc", "personal_auroc"),  # personalization.eval_every: AUROC on the kept-back share
}
ALWAYS_SHARED = ("num-examples", "partition_id")
ShareName = Literal["label_counts", "modality_counts", "val_accuracy", "train_metrics", "member_auroc"]


class PolicyError(ValueError):
    """The policy file is unreadable or invalid: one line naming the file, the key and the fix."""


class PolicyRefusal(RuntimeError):
    """This site refuses what the server asked; the message travels to the server as the reply's error."""


class Limits(BaseModel):
    """Ceilings the server's config cannot raise (null: no limit)."""

    model_config = ConfigDict(extra="forbid")
    max_rounds: PositiveInt | None = None  # this site trains in rounds 1..max_rounds, refuses later ones
    max_local_epochs: PositiveInt | None = None  # a larger num_epochs is refused
    max_local_steps: PositiveInt | None = None  # local_steps above this (or null, a full pass) is refused
    max_image_size: PositiveInt | None = None  # a larger image_size is refused (memory)
    max_memes_per_round: PositiveInt | None = None  # local training stops after this many memes in a round
    device: str | None = None  # cpu | cuda | cuda:1: replaces the run's device on this machine


class LocalDp(BaseModel):
    """Local DP this site adds to every train reply whatever the run asks (Flower's LocalDpMod,
    fedmemes/privacy/client_dp.py); a run's `client.dp` can only make it stronger."""

    model_config = ConfigDict(extra="forbid")
    epsilon: float = Field(gt=0)  # of one reply: smaller is more noise
    delta: float = Field(default=1e-5, gt=0, lt=1)
    clipping_norm: float = Field(default=1.0, gt=0)  # L2 bound on the update before the noise


class SitePolicy(BaseModel):
    """What `site.yaml` holds (README, "Site policy")."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=64)  # how refusals are signed; default: partition-<id>
    allowed_targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)
    limits: Limits = Field(default_factory=Limits)
    share: list[ShareName] | None = None  # null: the minimum the configured strategy needs
    local_dp: LocalDp | None = None  # null: local DP only when the run's client.dp asks for it
    needs_of: ClassVar[str] = "client_metrics_needed"  # the strategy class attribute naming the groups it reads

    def described(self, path: Path | None) -> str:
        """Return the policy as `fedmemes client --check` prints it: YAML with every default filled in, and its hash."""
        text = yaml.safe_dump(self.model_dump(), sort_keys=False)
        where = f"{path} (sha256 {file_hash(path)})" if path else "the default policy (no --policy)"
        return f"# site policy: {where}\n{text}"


def load(path: Path) -> SitePolicy:
    """Read and validate a policy file; raise PolicyError with one line naming the file, the key and the fix."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise PolicyError(f"{path}: cannot read the policy ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: a policy is a mapping of keys (name, allowed_targets, limits, share)")
    try:
        return SitePolicy.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        got = f", got {first['input']!r}" if "input" in first and not isinstance(first["input"], dict) else ""
        raise PolicyError(f"{path}: {key}: {first['msg']}{got}; see README 'Site policy' for the schema") from None


def file_hash(path: Path | None) -> str:
    """Return the sha256 of the policy file's bytes ("default" without a file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else "default"


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime_ns: int) -> SitePolicy:
    return load(Path(path))


POLICY_ENV = "FEDMEMES_SITE_POLICY"  # the machine's own setting (e.g. for `fedmemes simulate`), never the server's


def for_node(node_config: Mapping[str, Any]) -> tuple[SitePolicy, str]:
    """Return this node's policy and its hash: the file its `policy` node-config (`--policy`) names, else the one in
    $FEDMEMES_SITE_POLICY, else the default."""
    path = str(node_config.get("policy") or os.environ.get(POLICY_ENV) or "")
    if not path:
        return SitePolicy(), "default"
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:  # never fall back to the looser default when the named file went missing
        raise PolicyError(f"{path}: the site policy this node was started with is gone; restart it") from None
    return _cached(path, mtime), file_hash(Path(path))


def _targets(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Yield (key, value) of every `_target_` in the composed config, lists and nested mappings included."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                yield here, str(value)
            else:
                yield from _targets(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


# personalization=none, the default, changes nothing a site runs: a policy listing its targets before that config group
# existed still accepts it (the other methods need "fedmemes.federation.personalization." in allowed_targets).
ALWAYS_ALLOWED = ("fedmemes.federation.personalization.Personalization",)


def target_allowed(target: str, allowed: list[str]) -> bool:
    """Whether `target` is an exact entry, or names a class defined under a prefix entry (after importing only
    modules under that prefix)."""
    allowed = [current_target(a) for a in allowed]  # a policy written before a module move names old paths
    if target in allowed or target in ALWAYS_ALLOWED:
        return True
    for prefix in (p for p in allowed if p.endswith(".")):
        if not target.startswith(prefix):
            continue
        # `fedmemes.models.base.torch.save` starts with a prefix too: resolve it and require a class whose own
        # module lies under the prefix, so attributes reached through an imported module never pass.
        module_name, _, attr = target.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            try:  # a class at package level, e.g. fedmemes.strategies.ModalityAwareAvg
                parent, _, outer = module_name.rpartition(".")
                obj = getattr(getattr(importlib.import_module(parent), outer), attr)
            except (ImportError, AttributeError, ValueError):
                return False
        if inspect.isclass(obj) and f"{obj.__module__}.".startswith(prefix):
            return True
    return False


# Flower's own strategies cannot carry the class attribute: the groups those that read a metric need.
FLOWER_NEEDS: dict[str, tuple[str, ...]] = {"flwr.serverapp.strategy.QFedAvg": ("train_metrics",)}


def needed_shares(cfg: DictConfig) -> set[str]:
    """Return the share groups the configured strategy (and any it wraps) reads from every reply."""
    needed: set[str] = set()
    level: Any = cfg.server.strategy
    while isinstance(level, DictConfig) and "_target_" in level:
        from hydra.utils import get_class  # only after target_allowed passed: importing is then safe

        target = str(level["_target_"])
        needed |= set(getattr(get_class(target), SitePolicy.needs_of, FLOWER_NEEDS.get(target, ())))
        level = level.get("strategy")
    return needed


def refusals(policy: SitePolicy, cfg: DictConfig) -> list[str]:
    """Return what this site refuses in the run's composed config (empty: it may run); nothing is built."""
    container = OmegaConf.to_container(cfg, resolve=True)
    found = [
        f"{key}={value}" for key, value in _targets(container, "") if not target_allowed(value, policy.allowed_targets)
    ]
    if found:  # the strategy's needs are read from its class: only import it once every target passed
        return found
    limits = policy.limits
    if limits.max_image_size and int(cfg.image_size) > limits.max_image_size:
        found.append(f"image_size={cfg.image_size} > limits.max_image_size={limits.max_image_size}")
    if limits.max_local_steps and not (cfg.local_steps and int(cfg.local_steps) <= limits.max_local_steps):
        found.append(f"local_steps={cfg.local_steps} > limits.max_local_steps={limits.max_local_steps}")
    if policy.share is not None and (missing := needed_shares(cfg) - set(policy.share)):
        found.append(
            f"server.strategy needs {sorted(missing)}, which share: {policy.share} keeps here "
            f"(strategy {cfg.server.strategy._target_})"
        )
    return found


def train_refusals(policy: SitePolicy, server_round: int, num_epochs: int) -> list[str]:
    """Return what this site refuses in a train request's round and epochs."""
    limits, found = policy.limits, []
    if limits.max_rounds and server_round > limits.max_rounds:
        found.append(f"round {server_round} > limits.max_rounds={limits.max_rounds}")
    if limits.max_local_epochs and num_epochs > limits.max_local_epochs:
        found.append(f"num_epochs={num_epochs} > limits.max_local_epochs={limits.max_local_epochs}")
    return found


def shared(policy: SitePolicy, cfg: DictConfig, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Return the train metrics that may leave: always num-examples and partition_id, then the policy's share
    (default: the groups the strategy needs, and the per-member AUROCs the run's personalization.eval_every asks)."""
    asked = {"member_auroc"} if OmegaConf.select(cfg, "personalization.eval_every") else set()
    groups = needed_shares(cfg) | asked if policy.share is None else set(policy.share)
    keys = {*ALWAYS_SHARED, *(k for g in groups for k in SHARE_GROUPS[g])}
    return {k: v for k, v in metrics.items() if k in keys}


def refuse(name: str, what: list[str]) -> None:
    """Raise PolicyRefusal when `what` is not empty; its message reaches the server's log."""
    if what:
        raise PolicyRefusal(f"site {name} refuses {'; '.join(what)} (its site policy)")
