"""The seed's MyCustomStrategy, done right: weight clients by local validation accuracy and data size."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from fedmemes.strategies.strategy_utils import ReplyAverage, average_arrays, first_arrays

log = logging.getLogger(__name__)


def performance_weights(accuracies: Sequence[float], sizes: Sequence[float], alpha: float) -> list[float]:
    """Return alpha*acc_k + (1-alpha)*n_k/sum(n), normalised to sum to 1 (data share if all are 0)."""
    n_total = float(sum(sizes))
    raw = [alpha * a + (1 - alpha) * n / n_total for a, n in zip(accuracies, sizes, strict=True)]
    total = sum(raw)
    return [r / total for r in raw] if total > 0 else [n / n_total for n in sizes]


class PerformanceWeightedAvg(ReplyAverage):
    """FedAvg whose client weights mix local validation accuracy (`accuracy_key`) and data share.

    `accuracy_key` must be measured on a share the client kept back from training (our clients
    send `val_accuracy`); accuracy on the training data would reward overfitting.
    """

    client_metrics_needed = ("val_accuracy",)  # the site policy share every client must allow (site_policy.py)

    def __init__(self, *args: Any, alpha: float = 0.7, accuracy_key: str = "val_accuracy", **kwargs: Any) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"server.strategy.alpha must be in [0, 1], got {alpha}")
        super().__init__(*args, **kwargs)
        self.alpha = alpha
        self.accuracy_key = accuracy_key

    def average(self, server_round: int, contents: list[RecordDict], metrics: list[MetricRecord]) -> ArrayRecord:
        """Average the replies' arrays with performance weights."""
        if any(self.accuracy_key not in m for m in metrics):
            raise KeyError(
                f"performance_weighted needs metric '{self.accuracy_key}' in every train reply; "
                "set server.strategy.accuracy_key to a metric your clients send"
            )
        weights = performance_weights(
            [float(cast(float, m[self.accuracy_key])) for m in metrics],  # scalar metrics: the reply checks ensure it
            [float(cast(float, m[self.weighted_by_key])) for m in metrics],
            self.alpha,
        )
        log.info("round %d: performance weights %s", server_round, [round(w, 3) for w in weights])
        averaged = average_arrays([first_arrays(c) for c in contents], weights)
        return ArrayRecord({k: Array(v) for k, v in averaged.items()})
