"""The server's checkpoint after every round: global weights, round, history, best model, strategy state."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FILE = "checkpoint.pt"

# Server-side optimiser state of Flower's strategies: FedOpt family (FedAdam, FedYogi, FedAdagrad)
# keeps moments m_t/v_t, FedAvgM a momentum vector. A strategy of our own may instead define
# `state_dict()` / `load_state_dict(state)`.
STRATEGY_ATTRS = ("m_t", "v_t", "momentum_vector")


@dataclass
class Checkpoint:
    """What a resumed server needs to continue after `server_round` as if it had never stopped."""

    server_round: int
    arrays: dict[str, torch.Tensor]
    history: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    strategy: dict[str, Any] = field(default_factory=dict)


def strategy_state(strategy: Any) -> dict[str, Any]:
    """Return the strategy's own state (empty for stateless ones like FedAvg)."""
    if hasattr(strategy, "state_dict"):
        return dict(strategy.state_dict())
    return {name: getattr(strategy, name) for name in STRATEGY_ATTRS if getattr(strategy, name, None) is not None}


def restore_strategy(strategy: Any, state: dict[str, Any]) -> None:
    """Put a saved state back into a freshly built strategy."""
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
        return
    for name, value in state.items():
        setattr(strategy, name, value)


def save(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write `<run_dir>/checkpoint.pt` atomically (a crash mid-write leaves the previous one intact)."""
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"server_round": ckpt.server_round, "arrays": ckpt.arrays, "history": ckpt.history,
         "best_state": ckpt.best_state, "strategy": ckpt.strategy},
        tmp,
    )
    os.replace(tmp, path)
    return path


def load(run_dir: Path) -> Checkpoint:
    """Read the checkpoint of `run_dir`; fail with the fix when there is none."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: resume=RUN_DIR needs a run directory whose server finished at least one round")
    # Only our own files are read here; numpy arrays (strategy moments) need the full unpickler.
    data = torch.load(path, map_location="cpu", weights_only=False)
    return Checkpoint(**data)

