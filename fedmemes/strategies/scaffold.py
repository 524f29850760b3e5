"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct each client's drift."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedmemes.federation.client_corrections import CV_DELTA, SCAFFOLD_C
from fedmemes.strategies.server_lr import ServerLRFedAvg, as_numpy


class Scaffold(ServerLRFedAvg):
    """FedAvg that also sends the server control variate c and folds the clients' c_i deltas into it.

    Instruction: records `arrays` (model), `scaffold_c` (c), `config`. Reply: `arrays`, `cv_delta`
    (c_i new - old) and the metrics; the client adds c - c_i to every local gradient and keeps c_i
    in its `context.state` (fedmemes/federation/local_objectives.py). Server: w += server_lr * mean(y_i - w),
    c += |S|/N * mean(delta c_i).
    """

    # The ArrayRecords a sound reply holds (read by fedmemes/strategies/validation.py).
    reply_array_records = ("arrays", CV_DELTA)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.c: dict[str, np.ndarray] | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send c beside the model (zeros before the first round)."""
        if self.c is None:
            self.c = {k: np.zeros(a.shape, dtype=np.float32) for k, a in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        c_record = ArrayRecord({k: Array(v) for k, v in self.c.items()})
        for msg in messages:
            msg.content[SCAFFOLD_C] = c_record
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Take each reply's `cv_delta` out, average the models as FedAvg, then update c."""
        replies = list(replies)
        deltas = []
        for msg in replies:  # FedAvg's own checks want exactly one ArrayRecord per reply
            if not msg.has_error() and CV_DELTA in msg.content.array_records:
                deltas.append(as_numpy(msg.content.array_records[CV_DELTA]))
                del msg.content[CV_DELTA]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and deltas and self.c is not None:
            share = len(deltas) / max(self.num_nodes, len(deltas))
            for key in self.c:
                self.c[key] = (self.c[key] + share * np.mean([d[key] for d in deltas], axis=0)).astype(np.float32)
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        """Return c (checkpointed each round, so a resumed run keeps it)."""
        return {"c": self.c}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore c."""
        self.c = state.get("c")
