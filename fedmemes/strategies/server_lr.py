"""FedAvg with a server learning rate: w <- w + server_lr * (average of client models - w)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


def as_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """Return the record's tensors as numpy arrays."""
    return {k: a.numpy() for k, a in arrays.items()}


def as_record(tensors: dict[str, np.ndarray], like: ArrayRecord) -> ArrayRecord:
    """Return `tensors` as an ArrayRecord with the dtypes of `like` (the model keeps its dtypes)."""
    return ArrayRecord({k: Array(np.asarray(v, dtype=like[k].numpy().dtype)) for k, v in tensors.items()})


BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def steppable(key: str, values: np.ndarray) -> bool:
    """Say if a server step may move this tensor: float weights, not BatchNorm statistics (a variance must stay >=
    0)."""
    return bool(np.issubdtype(values.dtype, np.floating)) and not key.endswith(BN_STATS)


class ServerLRFedAvg(FedAvg):
    """FedAvg whose server takes a step of size `server_lr` along the averaged update.

    1.0 is plain FedAvg. Above 1 extrapolates: useful with short local training (few steps, small
    lr) where each round moves too little; below 1 damps rounds whose clients drift apart.
    Subclasses (SCAFFOLD, FedDyn) reuse `global_arrays`, the model sent this round.
    """

    def __init__(self, *args: Any, server_lr: float = 1.0, **kwargs: Any) -> None:
        if server_lr <= 0:
            raise ValueError(f"server.strategy.server_lr must be > 0, got {server_lr}")
        super().__init__(*args, **kwargs)
        self.server_lr = float(server_lr)
        self.global_arrays: ArrayRecord | None = None
        self.num_nodes = 0  # nodes connected when the round was configured (SCAFFOLD's and FedDyn's N)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model (the point the server steps from), then configure as FedAvg."""
        self.global_arrays = arrays
        self.num_nodes = len(list(grid.get_node_ids()))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average as FedAvg, then step `server_lr` of the way from the global model to the average."""
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self.global_arrays is None or self.server_lr == 1.0:
            return averaged, metrics
        start, avg = as_numpy(self.global_arrays), as_numpy(averaged)
        stepped = {k: start[k] + self.server_lr * (v - start[k]) if steppable(k, v) else v for k, v in avg.items()}
        return as_record(stepped, averaged), metrics
