"""Privacy accounting of central DP with fixed clipping: Flower's RdpAccountant, the budget, what a round reports.

Every epsilon comes from Flower's accountant (`flwr.serverapp.RdpAccountant`, backed by Google's dp-accounting);
this module only decides whether it applies, builds it from `server.dp`, and reads it back.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from fedmemes.config_schema import ConfigError

FIX = "use strategy=dp_fixed with noise_multiplier > 0 and fedavg or fedprox inside, or server.dp.max_epsilon=null"


def no_accounting(cfg: DictConfig) -> str | None:
    """Return why Flower's accountant cannot account this run's releases (None: it can)."""
    from flwr.serverapp.strategy import FedAvg
    from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase

    spec = OmegaConf.select(cfg, "server.strategy")
    outer = get_class(str(spec["_target_"]))
    if not issubclass(outer, DifferentialPrivacyFixedClippingBase):
        if "Adaptive" in outer.__name__:
            return "adaptive clipping (strategy=dp_adaptive) has no accountant in Flower 1.42"
        return f"server.strategy {outer.__name__} adds no DP noise"
    if not float(spec.get("noise_multiplier", 0.0)) > 0:
        return "noise_multiplier=0 adds no noise: no finite epsilon"
    inner = get_class(str(spec["strategy"]["_target_"]))
    # Flower's own condition (DifferentialPrivacyFixedClippingBase): a plain average of the clipped updates.
    if not (issubclass(inner, FedAvg) and inner.aggregate_train is FedAvg.aggregate_train):
        return f"the wrapped {inner.__name__} does not aggregate as FedAvg, which Flower's accountant assumes"
    if OmegaConf.select(cfg, "server.recipes"):
        return "server.recipes trials release models that the chosen run's accountant never counts"
    return None


def check(cfg: DictConfig) -> None:
    """Raise ConfigError (one line: key, why, fix) when server.dp.max_epsilon asks for a budget nobody can account."""
    budget = OmegaConf.select(cfg, "server.dp.max_epsilon")
    if budget is not None and (why := no_accounting(cfg)):
        raise ConfigError(f"server.dp.max_epsilon={budget} is not allowed: {why}; {FIX}")


def accountant_for(cfg: DictConfig) -> Any:
    """Return Flower's RdpAccountant for this run (None where it does not apply: no epsilon is reported)."""
    check(cfg)
    if no_accounting(cfg):
        return None
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    dp = cfg.server.dp
    return RdpAccountant(
        PrivacyConfig(
            target_delta=float(dp.target_delta),
            population_size=int(cfg.num_clients),
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            # Our sample is seeded by (random_seed, round), not secret: no amplification may be claimed from it.
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
            max_epsilon=None if dp.max_epsilon is None else float(dp.max_epsilon),
        )
    )


def spent(strategy: Any) -> dict[str, Any]:
    """Return the privacy spent so far for a round's metrics.json row ({} when the strategy has no accountant)."""
    accountant = getattr(strategy, "accountant", None)
    if accountant is None:
        return {}
    now = accountant.get_privacy_spent()
    return {"epsilon": float(now.epsilon), "delta": float(now.delta), "dp_releases": int(now.num_releases)}


def note(scores: dict[str, Any]) -> str:
    """Return the round line's privacy part ('' without an accountant)."""
    return f" | epsilon {scores['epsilon']:.3f} (delta {scores['delta']:g})" if "epsilon" in scores else ""


def budget_reason(cfg: DictConfig, strategy: Any, last_round: int) -> str:
    """Return why the run ended when Flower refused the release that would exceed server.dp.max_epsilon."""
    now = spent(strategy)
    return (
        f"privacy budget server.dp.max_epsilon={cfg.server.dp.max_epsilon} exhausted after round {last_round} "
        f"(epsilon {now.get('epsilon', float('nan')):.4f} at delta {now.get('delta', 0.0):g}): the next round would "
        "exceed it; the rounds before stand (raise the budget and resume=RUN_DIR to go on)"
    )


def restore_accountant(strategy: Any, state: dict[str, Any] | None) -> None:
    """Put a checkpoint's ledger of releases back into the strategy's accountant (a resume keeps the epsilon spent)."""
    accountant = getattr(strategy, "accountant", None)
    if accountant is None:
        return
    if state is None:  # its earlier rounds' releases are unknown: an epsilon from zero would understate the loss
        raise ValueError(
            "resume: the checkpoint holds no privacy ledger (saved before fedmemes kept one, or without noise), so the "
            "epsilon spent so far is unknown: start a new run"
        )
    # The spend stays; only the budget may change on resume (Flower refuses any other config difference).
    config = {**state["config"], "max_epsilon": accountant.config.max_epsilon}
    accountant.load_state_dict({**state, "config": config})
