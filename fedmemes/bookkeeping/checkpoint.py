"""The server's checkpoint after every round: global weights, round, history, best model, strategy state.

The file holds only tensors and plain containers (dict, list, str, int, float, bool, None) and is
read with `torch.load(weights_only=True)`, which refuses any other object: a checkpoint can never
run code when it is loaded. NumPy arrays in a strategy's state travel as tensors, tagged.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase

from fedmemes.bookkeeping import checkpoint_files
from fedmemes.models.old_targets import current_target
from fedmemes.privacy import server_dp

CHECKPOINT_FILE = checkpoint_files.LATEST
_NUMPY_TAG = "__numpy__"  # {"__numpy__": tensor}: a NumPy array in a strategy's state

# Server-side optimiser state of Flower's strategies: FedOpt family (FedAdam, FedYogi, FedAdagrad)
# keeps moments m_t/v_t (its step is the round: strategies/resumable.py), FedAvgM a momentum vector,
# the DP wrappers their noise seed and, with adaptive clipping, the clipping norm they learnt. A
# strategy of our own may instead define `state_dict()` / `load_state_dict(state)` returning plain
# containers, tensors and NumPy arrays.
STRATEGY_ATTRS = ("m_t", "v_t", "momentum_vector", "noise_seed")
WRAPPED = "strategy"  # a wrapper's state holds the wrapped strategy's state under this key


@dataclass
class Checkpoint:
    """What a resumed server needs to continue after `server_round` as if it had never stopped."""

    server_round: int
    arrays: dict[str, torch.Tensor]
    history: dict[str, Any]
    best_state: dict[str, torch.Tensor]
    strategy: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)  # model/strategy targets the run was made with (`setup_of`)


def strategy_state(strategy: Any) -> dict[str, Any]:
    """Return the strategy's own state and, under WRAPPED, that of the strategy it wraps (empty for FedAvg)."""
    if hasattr(strategy, "state_dict"):
        state = dict(strategy.state_dict())
    else:
        state = {name: getattr(strategy, name) for name in STRATEGY_ATTRS if getattr(strategy, name, None) is not None}
    if isinstance(strategy, DifferentialPrivacyAdaptiveBase):  # learnt each round, not a setting
        state["clipping_norm"] = float(strategy.clipping_norm)
    if getattr(strategy, "accountant", None) is not None:  # Flower's RdpAccountant: its ledger of DP releases
        state["accountant"] = strategy.accountant.state_dict()
    if getattr(strategy, "strategy", None) is not None:  # Flower's DP wrappers keep the wrapped one here
        state[WRAPPED] = strategy_state(strategy.strategy)
    return state


def restore_strategy(strategy: Any, state: dict[str, Any]) -> None:
    """Put a saved state back into a freshly built strategy and the strategies it wraps."""
    state = dict(state)
    wrapped = state.pop(WRAPPED, None)
    if wrapped is not None and getattr(strategy, "strategy", None) is not None:
        restore_strategy(strategy.strategy, wrapped)
    server_dp.restore_accountant(strategy, state.pop("accountant", None))
    if hasattr(strategy, "load_state_dict"):
        strategy.load_state_dict(state)
        return
    for name, value in state.items():
        setattr(strategy, name, value)


def _plain(value: Any, where: str) -> Any:
    """Return `value` as tensors and plain containers; raise TypeError naming anything else."""
    if isinstance(value, np.ndarray):
        return {_NUMPY_TAG: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(
        f"checkpoint: {where} is a {type(value).__name__}; a checkpoint keeps only tensors, NumPy arrays, "
        "numbers, strings and dicts/lists of them (make the strategy's state_dict() return those)"
    )


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NUMPY_TAG}:
            return value[_NUMPY_TAG].numpy()
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def save(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write `<run_dir>/checkpoint.pt` atomically, keeping the one before as checkpoint.prev.pt (checkpoint_files)."""
    payload = {
        "server_round": ckpt.server_round,
        "arrays": ckpt.arrays,
        "history": ckpt.history,
        "best_state": ckpt.best_state,
        "strategy": ckpt.strategy,
        "setup": ckpt.setup,
    }
    buffer = io.BytesIO()  # in memory first: a full disk then fails in our write, named, never inside torch
    torch.save(_plain(payload, "checkpoint"), buffer)
    return checkpoint_files.write(Path(run_dir), buffer.getvalue())


def _read(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  UnpicklingError: an object the safe loader refuses (or a broken file)
        first = re.sub(r"\x1b\[[0-9;]*m", "", (str(err).splitlines() or [""])[0])[:200]  # may be empty, or coloured
        raise ValueError(
            f"cannot be read safely ({type(err).__name__}: {first}; a checkpoint holds only tensors and plain values)"
        ) from None


def load(run_dir: Path) -> Checkpoint:
    """Read the run's latest whole checkpoint (else the previous one, with a warning) without unpickling any object;
    FileNotFoundError or checkpoint_files.CheckpointDamaged say the way on."""
    data = _restored(checkpoint_files.read(Path(run_dir), _read))
    data.setdefault("setup", {})
    return Checkpoint(**data)


def exists(run_dir: Path) -> bool:
    """Whether the run has a checkpoint to resume from (the latest or the previous one)."""
    return any((Path(run_dir) / name).is_file() for name in (CHECKPOINT_FILE, checkpoint_files.PREVIOUS))


def setup_of(cfg: Any) -> dict[str, Any]:
    """Return the parts of a config a checkpoint must match to be resumed: the model and strategy targets."""
    from omegaconf import OmegaConf

    strategy, targets = OmegaConf.select(cfg, "server.strategy"), []
    while strategy is not None and "_target_" in strategy:  # a DP wrapper holds the wrapped strategy
        targets.append(str(strategy["_target_"]))
        strategy = strategy.get("strategy")
    model = OmegaConf.select(cfg, "model._target_")
    return {"model": None if model is None else str(model), "strategy": targets}


def _current(saved: Any) -> Any:
    """Return a saved model target (a string) or strategy targets (a list) with moved paths rewritten."""
    if isinstance(saved, str):
        return current_target(saved)
    return [current_target(t) for t in saved] if isinstance(saved, list) else saved


def differences(ckpt: Checkpoint, setup: dict[str, Any], tensors: dict[str, torch.Tensor] | None) -> list[str]:
    """Return how the checkpoint differs from this configuration (model, strategy, tensor names and shapes)."""
    found = []
    for key in ("model", "strategy"):
        saved = _current(ckpt.setup.get(key))  # checkpoints saved before a module moved name the old path
        if saved is not None and setup.get(key) is not None and saved != setup[key]:
            found.append(f"{key}: the checkpoint has {saved}, this configuration {setup[key]}")
    if tensors is not None:
        saved_shapes = {k: list(v.shape) for k, v in ckpt.arrays.items()}
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        missing, extra = sorted(set(shapes) - set(saved_shapes)), sorted(set(saved_shapes) - set(shapes))
        if missing:
            found.append(
                f"tensors the model has but the checkpoint lacks: {missing[:5]}{' ...' if len(missing) > 5 else ''}"
            )
        if extra:
            found.append(
                f"tensors the checkpoint has but the model lacks: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            )
        changed = [
            f"{k} {saved_shapes[k]} -> {shapes[k]}"
            for k in sorted(set(shapes) & set(saved_shapes))
            if shapes[k] != saved_shapes[k]
        ]
        if changed:
            found.append(f"tensor shapes differ (checkpoint -> model): {changed[:5]}")
    return found


def check_fits(ckpt: Checkpoint, cfg: Any, tensors: dict[str, torch.Tensor] | None, where: Path | str = "") -> None:
    """Raise ValueError listing every difference between the checkpoint and this configuration."""
    found = differences(ckpt, setup_of(cfg), tensors)
    if found:
        raise ValueError(
            f"resume={where}: the checkpoint does not fit this configuration:\n  - "
            + "\n  - ".join(found)
            + "\nresume with the overrides the run was started with (see its config.yaml), or start a new run"
        )
