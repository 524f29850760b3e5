"""What makes a resumed run equal the run that was stopped, on Flower's own strategies.

After a resume `strategy.start` counts rounds from 1 again (fedmemes/federation/server_app.py sets
`round_offset` on every level to the rounds already done). Two of Flower's strategies read that
count as more than a label:
- the FedOpt family (FedAdam, FedYogi) takes `server_round` as Adam's step in its bias
  correction: `TrueRound` hands it the run's true round;
- the DP wrappers draw their noise from NumPy's global generator: `SeededNoise` seeds it per round
  from (`noise_seed`, true round), so a resumed round adds the noise the stopped run would have.
  `noise_seed` is a secret drawn at the run's start and kept only in the server's checkpoint
  (anyone who knows it can subtract the noise), unless `server.dp.noise_seed` pins it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.dp_adaptive_clipping import DifferentialPrivacyAdaptiveBase
from flwr.serverapp.strategy.dp_fixed_clipping import DifferentialPrivacyFixedClippingBase
from flwr.serverapp.strategy.fedopt import FedOpt

from fedmemes.strategies.strategy_utils import with_mixin

DP_WRAPPERS = (DifferentialPrivacyFixedClippingBase, DifferentialPrivacyAdaptiveBase)


class TrueRound:
    """Mixin for Flower's FedOpt family: aggregation (Adam's bias correction) sees the run's true round."""

    round_offset: int = 0  # rounds done before a resume

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as the wrapped class does, at round `server_round + round_offset`."""
        return super().aggregate_train(server_round + self.round_offset, replies)  # type: ignore[misc, no-any-return]


class SeededNoise:
    """Mixin for Flower's DP wrappers: NumPy's global generator is seeded per round while they aggregate."""

    round_offset: int = 0
    noise_seed: int | None = None  # set by build_strategy (server.dp.noise_seed, else a fresh secret)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as the wrapped class does, its noise drawn from (noise_seed, true round)."""
        if self.noise_seed is None:
            self.noise_seed = secrets.randbits(63)
        saved = np.random.get_state()  # Flower draws from the global generator: leave it as it was found
        seed = self.noise_seed
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32, server_round + self.round_offset])
        try:
            return super().aggregate_train(server_round, replies)  # type: ignore[misc, no-any-return]
        finally:
            np.random.set_state(saved)


def resumable(cls: type[Strategy]) -> type[Strategy]:
    """Return `cls` with the mixin it needs to resume exactly (itself when it needs none)."""
    if issubclass(cls, FedOpt):
        return with_mixin(TrueRound, cls)
    if issubclass(cls, DP_WRAPPERS):
        return with_mixin(SeededNoise, cls)
    return cls


def levels(strategy: Any) -> Iterator[Any]:
    """Yield the strategy and every strategy it wraps (Flower's DP wrappers keep theirs in `.strategy`)."""
    while strategy is not None:
        yield strategy
        strategy = getattr(strategy, "strategy", None)


def set_round_offset(strategy: Any, offset: int) -> None:
    """Tell every level how many rounds a resumed run has already done."""
    for level in levels(strategy):
        level.round_offset = offset
