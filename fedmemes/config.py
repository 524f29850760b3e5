"""The one bridge between Hydra and Flower: compose configs from an overrides string, build objects."""

from __future__ import annotations

import functools
import inspect
import logging
import os
import shlex
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

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


def build_strategy(cfg: DictConfig, **hooks: Any) -> Any:
    """Instantiate `server.strategy`, mapping the seed's key names and passing the hooks it accepts."""
    spec = OmegaConf.to_container(cfg.server.strategy, resolve=True)
    for old, new in SEED_STRATEGY_KEYS.items():
        if old in spec:
            logging.getLogger(__name__).warning("server.strategy.%s is the seed's name; Flower 1.42 calls it %s", old, new)
            spec[new] = spec.pop(old)
    target = get_class(spec["_target_"])
    accepted = inspect.signature(target).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    extra = {k: v for k, v in hooks.items() if takes_kwargs or k in accepted}
    return instantiate(spec, **extra)


def build_model(cfg: DictConfig) -> Any:
    """Instantiate the configured model (`model._target_`)."""
    return instantiate(cfg.model)
