"""Seeded client sampling for any strategy: exactly `clients_per_round` nodes train each round."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedmemes.strategies.strategy_utils import innermost, with_mixin

log = logging.getLogger(__name__)

SampleReportFn = Callable[[int, dict[str, list[int]]], None]
# Strategy keys whose null means "the round's sample size" (the YAMLs interpolate ${clients_per_round}).
SIZE_KEYS = ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes", "num_sampled_clients")


@dataclass(frozen=True)
class SampleRule:
    """How many nodes a round asks: exactly `count`, else Flower's rule (`fraction` of the connected, at least
    `minimum`)."""

    count: int | None = None
    fraction: float = 1.0
    minimum: int = 0

    def size(self, connected: int) -> int:
        """Return the sample size when `connected` nodes are online (0: skip this phase)."""
        if self.count is not None:
            return min(self.count, connected)
        if self.fraction <= 0.0:  # Flower's meaning of fraction_* = 0: skip the phase
            return 0
        return min(connected, max(int(connected * self.fraction), self.minimum))

    def needs(self) -> int:
        """Return how many nodes must be online before sampling (an exact count waits for all of them)."""
        return self.count or 0


@dataclass(frozen=True)
class SamplingPlan:
    """Train and evaluate sample rules, the seed, and how many nodes to wait for."""

    train: SampleRule
    evaluate: SampleRule
    seed: int = 0
    min_available: int = 0


def _count(value: Any, key: str, num_clients: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or int(value) != value or not 1 <= int(value) <= num_clients:
        raise ValueError(
            f"{key}={value!r} must be a whole number of clients in 1..num_clients={num_clients}, "
            f"or null to sample server.strategy.fraction_* of them"
        )
    return int(value)


def plan_from(
    spec: dict[str, Any], num_clients: int, clients_per_round: Any, clients_per_eval_round: Any, seed: int
) -> SamplingPlan:
    """Build the plan from `server.strategy` (innermost level holds fraction_*/min_*) and the top-level counts."""
    inner = spec
    while isinstance(inner.get("strategy"), dict):  # DP wrappers: the wrapped strategy samples
        inner = inner["strategy"]
    train = SampleRule(
        _count(clients_per_round, "clients_per_round", num_clients),
        float(inner.get("fraction_train", 1.0)),
        int(inner.get("min_train_nodes") or 0),
    )
    evaluate = SampleRule(
        _count(clients_per_eval_round, "clients_per_eval_round", num_clients),
        float(inner.get("fraction_evaluate", 1.0)),
        int(inner.get("min_evaluate_nodes") or 0),
    )
    wanted = inner.get("min_available_nodes")
    wanted = train.size(num_clients) if wanted is None else int(wanted)
    if wanted > num_clients:  # Flower would wait forever for nodes that never come
        log.warning(
            "server.strategy.min_available_nodes=%d is above num_clients=%d; waiting for %d",
            wanted,
            num_clients,
            num_clients,
        )
    return SamplingPlan(train, evaluate, seed, min(wanted, num_clients))


def fill_sizes(spec: dict[str, Any], size: int) -> dict[str, Any]:
    """Replace null SIZE_KEYS at every level of `spec` by the train sample size (Flower needs numbers)."""
    for key in SIZE_KEYS:
        if key in spec and spec[key] is None:
            spec[key] = size
    if isinstance(spec.get("strategy"), dict):
        fill_sizes(spec["strategy"], size)
    return spec


def seeded_sample(node_ids: Iterable[int], size: int, seed: int, server_round: int, phase: str) -> list[int]:
    """Draw `size` node ids, reproducibly for (seed, round, phase) and the same connected nodes."""
    pool = sorted(node_ids)  # the grid returns a set: sort so the seed alone decides
    return sorted(random.Random(f"{seed}:{server_round}:{phase}").sample(pool, size))


class _SampledGrid:
    """A Grid view whose connected nodes are only the sampled ones (everything else passes through)."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@contextlib.contextmanager
def _takes_all(strategy: Any, phase: str, size: int) -> Iterator[None]:
    # Flower's FedAvg samples again from the nodes it sees: make it take every node offered,
    # and only for this call, so the strategy's own settings stay what the user configured.
    keys = (
        {"fraction_train": 1.0, "min_train_nodes": size}
        if phase == "train"
        else {"fraction_evaluate": 1.0, "min_evaluate_nodes": size}
    )
    keys["min_available_nodes"] = size
    saved = {k: getattr(strategy, k) for k in keys if hasattr(strategy, k)}
    for k in saved:
        setattr(strategy, k, keys[k])
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(strategy, k, v)


class SeededSampling:
    """Mixin for any `flwr.serverapp.strategy` class: the round's nodes are a seeded sample of the plan's size.

    Waits (like Flower) until `plan.min_available` nodes are online, draws the sample from
    (seed, round), reports it through `sample_report_fn`, and hands the inner strategy a Grid
    that shows only the sampled nodes. Use `with_sampling`.
    """

    sampling: SamplingPlan = SamplingPlan(SampleRule(), SampleRule(fraction=0.0))
    sample_report_fn: SampleReportFn | None = None
    round_offset: int = 0  # rounds done before a resume: the seed follows the true round
    poll_s: float = 1.0

    def sample(self, grid: Grid, server_round: int, phase: str) -> list[int]:
        """Wait for enough nodes, then return this round's seeded sample for `phase` ('train' or 'evaluate')."""
        rule = self.sampling.train if phase == "train" else self.sampling.evaluate
        wanted = max(self.sampling.min_available, rule.needs())
        while len(nodes := list(grid.get_node_ids())) < wanted:
            log.info("waiting for nodes: %d connected, %d needed", len(nodes), wanted)
            time.sleep(self.poll_s)
        size = rule.size(len(nodes))
        chosen = seeded_sample(nodes, size, self.sampling.seed, server_round + self.round_offset, phase) if size else []
        if self.sample_report_fn is not None and chosen:
            self.sample_report_fn(server_round, {"sampled" if phase == "train" else "sampled_eval": chosen})
        return chosen

    def _configure(
        self, phase: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        chosen = self.sample(grid, server_round, phase)
        if not chosen:
            return []
        parent = super().configure_train if phase == "train" else super().configure_evaluate  # type: ignore[misc]
        with _takes_all(innermost(self), phase, len(chosen)):
            return list(parent(server_round, arrays, config, _SampledGrid(grid, chosen)))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to this round's seeded train sample."""
        return self._configure("train", server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global model to this round's seeded evaluate sample."""
        return self._configure("evaluate", server_round, arrays, config, grid)


def with_sampling(cls: type[Strategy]) -> type[Strategy]:
    """Return `cls` with `SeededSampling` in front (same name, still an instance of `cls`)."""
    return with_mixin(SeededSampling, cls)
