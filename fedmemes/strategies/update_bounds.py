"""Bound what one client can do to a round: clip outsized updates, cap the weight its claimed size buys.

Rules (set under `server:` in conf/config.yaml):
- `server.max_update_norm`: a client's update is its tensors minus the global model, all tensors
  together as one vector (L2 norm, float64). `K*median` (default `3*median`) bounds it by K times
  the round's median update norm over the replies that passed the content checks (the lower
  median, so with two replies the smaller one sets the scale and one hostile reply of two cannot
  raise its own bound); a plain number is a fixed bound; both are allowed together as
  `[3*median, 10.0]` (the smaller wins); null switches clipping off. An update above the bound
  is scaled down onto it (`clipped_replies`); a median of 0 sets no relative bound that round.
- `server.max_client_weight`: no reply may carry more than this share of the round's total
  claimed `num-examples` (and of each count a strategy weighs by, e.g. modality_aware's
  `n_text`). `K/n` (default `2/n`) scales with the n replies of the round: at most K equal
  shares, so 2 honest clients keep FedAvg's size weights whatever their sizes, while one
  over-claimer among 10 holds at most 20% (and its update, clipped to 3x the median norm, at
  most 0.6 of the 0.8 the other nine pull with). A plain number is a fixed share in (0, 1].
  Larger claims are cut down to the level where they hold exactly the cap (water-filling,
  rounded down), before the strategy aggregates (`capped_weights`). With n replies the cap is at
  least 1/n (n clients cannot all be under 1/n); null switches it off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_UPDATE_NORM = "3*median"
DEFAULT_MAX_CLIENT_WEIGHT = "2/n"
_RELATIVE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*\*\s*median\s*")
_PER_REPLY = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*/\s*n\s*")


def parse_weight(value: Any) -> tuple[float | None, float | None]:
    """Read `server.max_client_weight` into (fixed share, K of K/n); raise ValueError naming the allowed forms."""
    if value is None:
        return None, None
    match = _PER_REPLY.fullmatch(value) if isinstance(value, str) else None
    if match and float(match.group(1)) >= 1:
        return None, float(match.group(1))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
        return float(value), None
    raise ValueError(
        f"server.max_client_weight: {value!r} is not a cap; use 'K/n' with K >= 1 (e.g. '2/n': at most twice an "
        "equal share of the round), a share in (0, 1], or null (no cap)"
    )


@dataclass(frozen=True)
class UpdateBounds:
    """Parsed `server.max_update_norm` and `server.max_client_weight`."""

    median_factor: float | None = 3.0  # K of K*median; None: no relative bound
    norm_limit: float | None = None  # fixed L2 bound; None: none
    max_client_weight: float | None = None  # a fixed share of the round
    weight_per_reply: float | None = 2.0  # K of K/n

    @classmethod
    def parse(
        cls, max_update_norm: Any = DEFAULT_MAX_UPDATE_NORM, max_client_weight: Any = DEFAULT_MAX_CLIENT_WEIGHT
    ) -> UpdateBounds:
        """Read the two config values; raise ValueError naming the key and the allowed forms."""
        factor, limit = None, None
        rules = max_update_norm if isinstance(max_update_norm, (list, tuple)) else [max_update_norm]
        for rule in rules:
            if rule is None:
                continue
            match = _RELATIVE.fullmatch(rule) if isinstance(rule, str) else None
            if match and float(match.group(1)) > 0:
                factor = float(match.group(1))
            elif isinstance(rule, (int, float)) and not isinstance(rule, bool) and 0 < rule < math.inf:
                limit = float(rule)
            else:
                raise ValueError(
                    f"server.max_update_norm: {rule!r} is not a bound; use 'K*median' (e.g. '3*median'), "
                    "a positive number (a fixed L2 bound), a list of both, or null (no clipping)"
                )
        return cls(factor, limit, *parse_weight(max_client_weight))

    def weight_cap(self, replies: int) -> float | None:
        """Return the largest share of a round of `replies` replies one claim may hold (None: no cap)."""
        if self.weight_per_reply is not None:
            return min(1.0, self.weight_per_reply / max(1, replies))
        return self.max_client_weight

    def describe_weight(self) -> str:
        """Return the weight rule as configured, for log lines."""
        return f"{self.weight_per_reply:g}/n" if self.weight_per_reply is not None else f"{self.max_client_weight}"

    def describe(self) -> str:
        """Return the norm rule in words for log lines."""
        parts = ([f"{self.median_factor:g}*median"] if self.median_factor else []) + (
            [f"{self.norm_limit:g}"] if self.norm_limit else []
        )
        return " and ".join(parts) or "off"


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """Return the L2 norm of (arrays - reference) over all tensors, computed in float64."""
    total = 0.0
    for key, ref in reference.items():
        diff = arrays[key].astype(np.float64) - ref.astype(np.float64)
        total += float(np.dot(diff.ravel(), diff.ravel()))
    return math.sqrt(total)


def norm_bound(norms: Sequence[float], bounds: UpdateBounds) -> float | None:
    """Return this round's L2 bound on an update (None: no bound)."""
    limits = [bounds.norm_limit] if bounds.norm_limit is not None else []
    finite = sorted(n for n in norms if math.isfinite(n))
    if bounds.median_factor is not None and finite:
        median = finite[(len(finite) - 1) // 2]  # lower median
        if median > 0:
            limits.append(bounds.median_factor * median)
    return min(limits) if limits else None


def clip_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], norm: float, bound: float
) -> dict[str, np.ndarray]:
    """Scale the update (arrays - reference) down to L2 norm `bound`; keep the reference's dtypes."""
    scale = bound / norm if math.isfinite(norm) and norm > 0 else 0.0
    return {
        k: (ref.astype(np.float64) + (arrays[k].astype(np.float64) - ref.astype(np.float64)) * scale).astype(ref.dtype)
        for k, ref in reference.items()
    }


def capped_counts(counts: Sequence[int], cap: float | None) -> list[int]:
    """Lower the largest counts until none is above `cap` of the total (water-filling, rounded down)."""
    values = [int(c) for c in counts]
    voters = sum(v > 0 for v in values)
    if cap is None or voters <= 1:
        return values
    cap = max(cap, 1.0 / voters)
    if max(values) <= cap * sum(values):
        return values
    ordered = sorted(values, reverse=True)
    level = float(min(v for v in values if v > 0))  # fallback: everybody equal
    for k in range(1, voters):
        if k * cap >= 1:
            break
        candidate = cap * sum(ordered[k:]) / (1 - k * cap)  # k clients at `candidate` hold exactly cap each
        if ordered[k] <= candidate:
            level = candidate
            break
    return [min(v, math.floor(level + 1e-9)) for v in values]  # 1e-9: float error must not cut a count that fits
