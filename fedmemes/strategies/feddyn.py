"""FedDyn (Acar et al., ICLR 2021): a dynamic regulariser aligns local optima with the global one."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedmemes.federation.client_corrections import FEDDYN_ALPHA
from fedmemes.strategies.server_lr import ServerLRFedAvg, as_numpy, as_record, steppable


class FedDyn(ServerLRFedAvg):
    """FedAvg plus FedDyn's server state h; clients minimise L_k(w) - <g_k, w> + (alpha/2)||w - w_global||^2.

    Sends `feddyn-alpha` in the train config (the client keeps g_k in its `context.state`).
    Server: h <- h - alpha * |S|/N * (mean(w_k) - w);  w <- mean(w_k) - h / alpha.
    """

    def __init__(self, *args: Any, alpha: float = 0.01, **kwargs: Any) -> None:
        if alpha <= 0:
            raise ValueError(f"server.strategy.alpha must be > 0 for FedDyn, got {alpha}")
        super().__init__(*args, **kwargs)
        self.alpha = float(alpha)
        self.h: dict[str, np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send alpha with the round's config."""
        config = ConfigRecord({**dict(config), FEDDYN_ALPHA: self.alpha})
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average (with the server step), update h, subtract h / alpha."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.global_arrays is None:
            return arrays, metrics
        start, avg = as_numpy(self.global_arrays), as_numpy(arrays)
        if self.h is None:
            self.h = {k: np.zeros_like(v, dtype=np.float32) for k, v in avg.items() if steppable(k, v)}
        share = sum(not m.has_error() for m in replies) / max(self.num_nodes, 1)
        out = dict(avg)
        for key, h in self.h.items():
            self.h[key] = (h - self.alpha * min(share, 1.0) * (avg[key] - start[key])).astype(np.float32)
            out[key] = avg[key] - self.h[key] / self.alpha
        return as_record(out, arrays), metrics

    def state_dict(self) -> dict[str, Any]:
        """Return h (checkpointed each round)."""
        return {"h": self.h}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore h."""
        self.h = state.get("h")
