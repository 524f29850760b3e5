"""The one bridge between Hydra and Flower: compose configs from an overrides string, build objects."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shlex
from typing import TYPE_CHECKING, Any, cast

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from fedmemes.strategies.sampling import fill_sizes, plan_from, with_sampling
from fedmemes.strategies.update_bounds import DEFAULT_MAX_CLIENT_WEIGHT, DEFAULT_MAX_UPDATE_NORM, UpdateBounds
from fedmemes.strategies.validation import with_reply_checks

if TYPE_CHECKING:  # the models (and torch) are imported where a model is built, not here
    from fedmemes.models.base import MemeClassifier

# Flower's run_simulation gives the apps an empty run_config, so the CLI also passes
# the overrides in this variable (Ray actors inherit the driver's environment).
OVERRIDES_ENV = "FEDMEMES_OVERRIDES"
OVERRIDES_KEY = "overrides"  # the run_config key under `flwr run` and deployments

# The seed's (Flower <= 1.x) strategy keys -> Flower 1.42's names.
SEED_STRATEGY_KEYS = {
    "fraction_fit": "fraction_train",
    "min_fit_clients": "min_train_nodes",
    "min_available_clients": "min_available_nodes",
    "min_evaluate_clients": "min_evaluate_nodes",
}
# Seed-era keys with no server.strategy equivalent in Flower 1.42 -> where that setting lives now.
REMOVED_STRATEGY_KEYS = {
    "on_fit_config_fn": "the server sends lr and num_epochs itself: set lr=... num_epochs=...",
    "on_evaluate_config_fn": "the server sends the evaluate config itself: delete the key",
    "evaluate_fn": "the server scores its hold-out every round already: delete the key",
    "initial_parameters": "the initial model is built from model=...: delete the key",
    "fit_metrics_aggregation_fn": "Flower 1.42 calls it train_metrics_aggr_fn and fedmemes sets it: delete the key",
    "evaluate_metrics_aggregation_fn": "Flower 1.42 calls it evaluate_metrics_aggr_fn: rename the key",
    "accept_failures": "failed and malformed replies are always dropped (fedmemes.strategies.validation): delete the key",
    "inplace": "Flower 1.42 always aggregates in place: delete the key",
}
HYDRA_KEYS = {"_target_", "_recursive_", "_convert_", "_partial_", "_args_"}


def overrides_of(run_config: dict[str, Any]) -> str:
    """Return the Hydra overrides string for this run: run_config first, then the environment."""
    return str(run_config.get(OVERRIDES_KEY) or os.environ.get(OVERRIDES_ENV, ""))


@functools.lru_cache(maxsize=8)
def load_config(overrides: str = "") -> DictConfig:
    """Compose `fedmemes/conf/config.yaml` with overrides such as 'num_rounds=3 model=early_fusion'."""
    args = shlex.split(overrides)
    if GlobalHydra.instance().is_initialized():  # inside `fedmemes simulate` (hydra.main already ran)
        cfg = compose("config", overrides=args)
    else:
        with initialize_config_module("fedmemes.conf", version_base="1.3"):
            cfg = compose("config", overrides=args)
    OmegaConf.resolve(cfg)
    OmegaConf.set_readonly(cfg, True)  # cached and shared: nobody may change it
    return cfg


def _accepted(cls: type) -> tuple[set[str], bool]:
    """Return the named constructor parameters of `cls`, following **kwargs into its bases, and if it stays open-ended."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is object:
            return names, True
        params = inspect.signature(klass.__init__).parameters  # type: ignore[misc]  # read, never called
        names |= {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names, False
    return names, True


def _build_one(spec: dict[str, Any], where: str, hooks: dict[str, Any], outer: bool = False) -> Any:
    for old, new in SEED_STRATEGY_KEYS.items():
        if old in spec:
            logging.getLogger(__name__).warning("%s.%s is the seed's name; Flower 1.42 calls it %s", where, old, new)
            spec[new] = spec.pop(old)
    for old, why in REMOVED_STRATEGY_KEYS.items():
        if old in spec:
            raise ValueError(f"{where}.{old} is a Flower 1.x key that Flower 1.42 dropped; {why}")
    target = get_class(spec["_target_"])
    min_valid = int(spec.pop("min_valid_replies", 1))  # the reply checks' setting (outermost only), not the class's
    accepted, open_ended = _accepted(target)
    unknown = sorted(set(spec) - accepted - HYDRA_KEYS)
    if unknown and not open_ended:
        raise ValueError(f"{where}: {target.__name__} takes no {unknown}; it takes {sorted(accepted - set(hooks))}")
    extra = {k: v for k, v in hooks.items() if k in accepted}
    if isinstance(spec.get("strategy"), dict) and "_target_" in spec["strategy"]:  # a wrapper (central DP) around another strategy
        extra["strategy"] = _build_one(spec.pop("strategy"), f"{where}.strategy", hooks)
    if not outer:
        return instantiate(spec, **extra)
    # The outermost strategy gets the reply checks: same class, filtering replies before it aggregates.
    args = instantiate(spec, _partial_=True, **extra)
    strategy: Any = with_sampling(with_reply_checks(target))(*args.args, **args.keywords)  # a class built at run time
    strategy.reply_report_fn = hooks.get("reply_report_fn")
    strategy.min_valid_replies = min_valid
    return strategy


def build_strategy(cfg: DictConfig, **hooks: Any) -> Any:
    """Instantiate `server.strategy` with seeded sampling and reply checks in front, mapping the seed's key names and passing the hooks each level accepts."""
    spec = cast(dict[str, Any], OmegaConf.to_container(cfg.server.strategy, resolve=True))  # a mapping node
    for old, new in SEED_STRATEGY_KEYS.items():  # the plan reads Flower 1.42's names (_build_one warns about the old ones)
        level: Any = spec
        while isinstance(level, dict):
            if old in level:
                level[new] = level[old]
            level = level.get("strategy")
    plan = plan_from(spec, int(cfg.num_clients), cfg.get("clients_per_round"), cfg.get("clients_per_eval_round"), int(cfg.random_seed))
    strategy = _build_one(fill_sizes(spec, plan.train.size(int(cfg.num_clients))), "server.strategy", hooks, outer=True)
    strategy.sampling, strategy.sample_report_fn = plan, hooks.get("sample_report_fn")
    strategy.update_bounds = UpdateBounds.parse(cfg.server.get("max_update_norm", DEFAULT_MAX_UPDATE_NORM),
                                                cfg.server.get("max_client_weight", DEFAULT_MAX_CLIENT_WEIGHT))
    strategy.reply_facts_fn = hooks.get("reply_facts_fn")  # client facts keyed by the node that sent them
    return strategy


def build_model(cfg: DictConfig) -> MemeClassifier:
    """Instantiate the configured model (`model._target_`)."""
    model: MemeClassifier = instantiate(cfg.model)
    return model
