"""Drop bad client replies before any strategy sees them, so one broken client cannot end the run."""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

log = logging.getLogger("fedmemes")

ReportFn = Callable[[int, dict[str, int]], None]


def _reference(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(a.shape), str(a.dtype)) for k, a in arrays.items()}


def reply_problem(msg: Message, expected: dict[str, tuple[tuple[int, ...], str]], weight_key: str,
                  array_names: tuple[str, ...] | None = None) -> str | None:
    """Return why a train reply cannot be aggregated, or None if it is sound.

    `array_names`: the ArrayRecords a strategy expects (its `reply_array_records`, e.g. SCAFFOLD's
    ('arrays', 'cv_delta')), each shaped like the model; None: exactly one ArrayRecord.
    """
    if msg.has_error():
        return f"client error: {msg.error.reason}"
    content = msg.content
    if array_names is not None and (set(content.array_records) != set(array_names) or len(content.metric_records) != 1):
        return f"expected ArrayRecords {sorted(array_names)} and one MetricRecord, got {sorted(content.array_records)} and {len(content.metric_records)}"
    if array_names is None and (len(content.array_records) != 1 or len(content.metric_records) != 1):
        return f"expected one ArrayRecord and one MetricRecord, got {len(content.array_records)} and {len(content.metric_records)}"
    for name, record in content.array_records.items():
        problem = _arrays_problem(record, expected)
        if problem:
            return problem if array_names is None else f"record '{name}': {problem}"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weight_key)
    if weight is None:
        return f"metric '{weight_key}' is missing"
    if isinstance(weight, list) or not math.isfinite(weight) or weight <= 0:
        return f"metric '{weight_key}' must be a positive number, got {weight!r}"
    for key, value in metrics.items():
        if any(not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            return f"metric '{key}' is not finite"
    return None


def _arrays_problem(arrays: ArrayRecord, expected: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        return f"tensor names differ from the global model: missing {missing[:3]}, extra {extra[:3]}"
    for key, array in arrays.items():
        shape, dtype = expected[key]
        if tuple(array.shape) != shape or str(array.dtype) != dtype:
            return f"tensor '{key}' is {array.dtype}{list(array.shape)}, the global model's is {dtype}{list(shape)}"
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            return f"tensor '{key}' has non-finite values"
    return None


def _metric_keys(msg: Message) -> frozenset[str]:
    return frozenset(next(iter(msg.content.metric_records.values())).keys())


def _innermost(strategy: Any) -> Any:
    while hasattr(strategy, "strategy"):  # Flower's DP wrappers keep the wrapped strategy here
        strategy = strategy.strategy
    return strategy


def _as_reference_dtypes(arrays: ArrayRecord, reference: ArrayRecord | None) -> ArrayRecord:
    # Some strategies (QFedAvg, the DP noise) return float64: the model must keep its dtypes, or
    # every client's next reply would mismatch the global model.
    if reference is None or all(arrays[k].dtype == reference[k].dtype for k in arrays if k in reference):
        return arrays
    return ArrayRecord({k: Array(a.numpy().astype(reference[k].numpy().dtype)) if k in reference else a for k, a in arrays.items()})


class ReplyChecks:
    """Mixin for any `flwr.serverapp.strategy` class: drop bad train replies, keep the model when too few remain.

    Sound replies carry finite tensors with the global model's names, shapes and dtypes, a positive
    `num-examples`, and the same metric keys as the other sound replies. Flower ends the whole run
    on mismatched keys, so the filter runs before the strategy's own checks. Use `with_reply_checks`.
    """

    min_valid_replies: int = 1  # fewer sound replies than this: the round keeps the previous model
    reply_report_fn: ReportFn | None = None  # told (round, counts) after every aggregation
    _reply_reference: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Remember the global model (the reference replies are checked against), then configure."""
        self._reply_reference = arrays
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def _minimum(self) -> int:
        return max(1, int(self.min_valid_replies))

    def filter_replies(self, server_round: int, replies: Iterable[Message]) -> tuple[list[Message], list[str]]:
        """Split replies into sound ones and the reasons the others were dropped."""
        weight_key = str(getattr(_innermost(self), "weighted_by_key", "num-examples"))
        expected = _reference(self._reply_reference) if self._reply_reference is not None else {}
        names = getattr(_innermost(self), "reply_array_records", None)  # e.g. SCAFFOLD's ("arrays", "cv_delta")
        sound, reasons = [], []
        for msg in replies:
            problem = reply_problem(msg, expected, weight_key, names) if expected else None
            if problem:
                reasons.append(f"node {msg.metadata.src_node_id}: {problem}")
            else:
                sound.append(msg)
        if sound:  # metric keys must agree: keep the most common key set
            common, _ = Counter(_metric_keys(m) for m in sound).most_common(1)[0]
            for msg in [m for m in sound if _metric_keys(m) != common]:
                sound.remove(msg)
                keys = _metric_keys(msg)
                reasons.append(f"node {msg.metadata.src_node_id}: metric keys differ from the other clients' "
                               f"(missing {sorted(common - keys)}, extra {sorted(keys - common)})")
        for reason in reasons:
            log.warning("round %d: dropped reply from %s", server_round, reason)
        return sound, reasons

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the sound replies; keep the previous global model when too few remain."""
        replies = list(replies)
        sound, reasons = self.filter_replies(server_round, replies)
        arrays, metrics = None, None
        if len(sound) >= self._minimum():
            arrays, metrics = super().aggregate_train(server_round, sound)  # type: ignore[misc]
        kept = arrays is None
        if not kept:
            arrays = _as_reference_dtypes(arrays, self._reply_reference)
        if kept:
            log.warning("round %d: %d sound replies of %d (minimum %d): keeping the previous global model",
                        server_round, len(sound), len(replies), self._minimum())
            arrays = self._reply_reference
        if self.reply_report_fn is not None:
            self.reply_report_fn(server_round, {"replies": len(replies), "dropped_replies": len(reasons), "kept_previous_model": int(kept)})
        return arrays, metrics


@functools.lru_cache(maxsize=None)
def with_reply_checks(cls: type[Strategy]) -> type[Strategy]:
    """Return `cls` with `ReplyChecks` in front (same name, still an instance of `cls`)."""
    if issubclass(cls, ReplyChecks):
        return cls
    return type(cls.__name__, (ReplyChecks, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
