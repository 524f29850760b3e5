"""Every conf/strategy option composes to the same server.strategy as before the YAMLs inherited from fedavg.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import fedmemes
from fedmemes.config import load_config

FLWR = "flwr.serverapp.strategy."
# fedavg.yaml's keys, with clients_per_round=3 so the ${clients_per_round} interpolations show.
SHARED: dict[str, Any] = {
    "fraction_train": 1.0,
    "fraction_evaluate": 0.0,
    "min_train_nodes": 3,
    "min_evaluate_nodes": 3,
    "min_available_nodes": 3,
    "min_valid_replies": None,
}
FEDAVG = {"_target_": FLWR + "FedAvg", **SHARED}
ADAM = {"eta": 0.01, "eta_l": 0.001, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}
# strategy -> its own keys on top of SHARED (the values main had before the YAMLs inherited).
OWN: dict[str, dict[str, Any]] = {
    "bulyan": {"_target_": FLWR + "Bulyan", "num_malicious_nodes": 0},
    "fedadagrad": {"_target_": FLWR + "FedAdagrad", "eta": 0.01, "eta_l": 0.001, "tau": 0.001},
    "fedadam": {"_target_": FLWR + "FedAdam", **ADAM},
    "fedavg": {},
    "fedavg_slr": {"_target_": "fedmemes.strategies.server_lr.ServerLRFedAvg", "server_lr": 2.0},
    "fedavgm": {"_target_": FLWR + "FedAvgM", "server_learning_rate": 1.0, "server_momentum": 0.9},
    "feddyn": {"_target_": "fedmemes.strategies.feddyn.FedDyn", "alpha": 0.01, "server_lr": 1.0},
    "fedmedian": {"_target_": FLWR + "FedMedian"},
    "fedprox": {"_target_": FLWR + "FedProx", "proximal_mu": 0.01},
    "fedtrimmedavg": {"_target_": FLWR + "FedTrimmedAvg", "beta": 0.2},
    "fedyogi": {"_target_": FLWR + "FedYogi", **ADAM},
    "krum": {"_target_": FLWR + "Krum", "num_malicious_nodes": 1},
    "modality_aware": {"_target_": "fedmemes.strategies.ModalityAwareAvg"},
    "multikrum": {"_target_": FLWR + "MultiKrum", "num_malicious_nodes": 1, "num_nodes_to_select": 2},
    "performance_weighted": {
        "_target_": "fedmemes.strategies.PerformanceWeightedAvg",
        "alpha": 0.7,
        "accuracy_key": "val_accuracy",
    },
    "qfedavg": {"_target_": FLWR + "QFedAvg", "q": 0.1, "client_learning_rate": 0.1, "train_loss_key": "train_loss"},
    "scaffold": {"_target_": "fedmemes.strategies.scaffold.Scaffold", "server_lr": 1.0},
}
# The DP wrappers keep their own keys and nest a whole strategy (FedAvg by default).
WRAPPERS: dict[str, dict[str, Any]] = {
    "dp_adaptive": {
        "_target_": FLWR + "DifferentialPrivacyServerSideAdaptiveClipping",
        "noise_multiplier": 0.1,
        "num_sampled_clients": 3,
        "initial_clipping_norm": 5.0,
        "target_clipped_quantile": 0.5,
        "clip_norm_lr": 0.2,
        "min_valid_replies": None,
        "strategy": FEDAVG,
    },
    "dp_fixed": {
        "_target_": FLWR + "DifferentialPrivacyServerSideFixedClipping",
        "noise_multiplier": 0.1,
        "clipping_norm": 5.0,
        "num_sampled_clients": 3,
        "min_valid_replies": None,
        "strategy": FEDAVG,
    },
}
OPTIONS = sorted(p.stem for p in (Path(fedmemes.__file__).parent / "conf" / "strategy").glob("*.yaml"))


def _strategy(overrides: str) -> dict[str, Any]:
    """Return the resolved server.strategy of `overrides` as plain Python."""
    container = OmegaConf.to_container(load_config(f"num_clients=3 clients_per_round=3 {overrides}").server.strategy)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def test_every_option_has_an_expectation() -> None:
    """A new strategy YAML gets its row here, so the table below stays complete."""
    assert sorted([*OWN, *WRAPPERS]) == OPTIONS


@pytest.mark.parametrize("name", sorted(OWN))
def test_strategy_composes_as_before(name: str) -> None:
    """fedavg.yaml's shared keys arrive through `defaults`, the file's own keys override or add."""
    assert _strategy(f"strategy={name}") == {**FEDAVG, **OWN[name]}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_composes_as_before(name: str) -> None:
    """The DP wrappers keep their own keys and nest FedAvg by default."""
    assert _strategy(f"strategy={name}") == WRAPPERS[name]


def test_wrapped_strategy_inherits_under_the_wrapper() -> None:
    """An inheriting strategy inside a wrapper takes the shared keys at the nested place, not at the top."""
    composed = _strategy("strategy=dp_fixed strategy@server.strategy.strategy=krum")
    assert composed["strategy"] == {**FEDAVG, **OWN["krum"]}
    assert "fraction_train" not in composed
