"""Helpers the custom strategies share: reading a reply's records, weighted averages, error-free replies."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

# Flower's public check (FedAvg's private `_check_and_log_replies` calls the same function): the
# same rules as every built-in strategy without reaching into FedAvg's internals.
from flwr.serverapp.strategy.strategy_utils import validate_message_reply_consistency

log = logging.getLogger(__name__)


def first_metrics(content: RecordDict) -> MetricRecord:
    """Return the one MetricRecord of a reply."""
    return next(iter(content.metric_records.values()))


def first_arrays(content: RecordDict) -> ArrayRecord:
    """Return the one ArrayRecord of a reply."""
    return next(iter(content.array_records.values()))


def average_arrays(
    records: Sequence[ArrayRecord], weights: Sequence[float], keys: Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Average the named tensors (all by default) of `records` with `weights` (normalised here)."""
    total = float(sum(weights))
    names = list(records[0].keys()) if keys is None else list(keys)
    out = {}
    for key in names:
        acc = sum((w / total) * r[key].numpy().astype(np.float64) for r, w in zip(records, weights, strict=True))
        out[key] = np.asarray(acc, dtype=records[0][key].numpy().dtype)
    return out


def train_replies(replies: Iterable[Message], weighted_by_key: str) -> list[Message]:
    """Return the replies without an error (logging the others), checked to be averageable as FedAvg checks them."""
    valid: list[Message] = []
    for msg in replies:
        if msg.has_error():
            log.info("reply from node %d is an error: %s", msg.metadata.src_node_id, msg.error.reason)
        else:
            valid.append(msg)
    if valid:  # raises InconsistentMessageReplies, which Flower's loop turns into a skipped aggregation
        validate_message_reply_consistency([m.content for m in valid], weighted_by_key, check_arrayrecord=True)
    return valid


class ReplyAverage(FedAvg):
    """FedAvg whose train step reads the error-free replies itself: subclasses weigh them in `average`."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the error-free replies' arrays with `average`; their metrics as FedAvg does."""
        contents = [m.content for m in train_replies(replies, self.weighted_by_key)]
        if not contents:
            return None, None
        arrays = self.average(server_round, contents, [first_metrics(c) for c in contents])
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def average(self, server_round: int, contents: list[RecordDict], metrics: list[MetricRecord]) -> ArrayRecord:
        """Return the new global arrays from the replies' contents and their metric records."""
        raise NotImplementedError(f"{type(self).__name__} must define average()")


def innermost(strategy: Any) -> Any:
    """Return the strategy that wrappers (Flower's DP strategies, ours) hold innermost."""
    while hasattr(strategy, "strategy"):  # Flower's DP wrappers keep the wrapped strategy here
        strategy = strategy.strategy
    return strategy


@functools.cache
def with_mixin(mixin: type[Any], cls: type[Any]) -> type[Any]:
    """Return `cls` with `mixin` in front (same name, still an instance of `cls`)."""
    if issubclass(cls, mixin):
        return cls
    return type(
        cls.__name__,
        (mixin, cls),
        {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__},
    )
