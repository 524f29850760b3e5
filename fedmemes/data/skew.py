"""Per-client modality skew and label noise: seeded, so every process computes the same clients."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedmemes.data.meme import Meme
from fedmemes.data.partitioners import SKEW_KEYS

ROLES = ("both", "text_only", "image_only")


def client_count(share_or_count: float | int, num_clients: int, key: str) -> int:
    """Turn a share (float, 0..1.0) or a count (int) of clients into a count."""
    if isinstance(share_or_count, bool) or share_or_count < 0:
        raise ValueError(
            f"partition.{key} must be a share (0.0..1.0) or a count (0..num_clients), got {share_or_count!r}"
        )
    if isinstance(share_or_count, int):
        n = share_or_count
    elif share_or_count <= 1.0:
        # A positive share always names at least one client: 0.1 of 3 clients still means one.
        n = max(1, math.floor(share_or_count * num_clients + 0.5)) if share_or_count > 0 else 0
    else:
        raise ValueError(
            f"partition.{key}={share_or_count} is a float above 1.0; give a share (0.5) or an int count (2)"
        )
    if n > num_clients:
        raise ValueError(f"partition.{key}={share_or_count} asks for {n} clients but num_clients={num_clients}")
    return n


def _rate(value: Any, key: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"partition.{key} must be in [0, 1], got {value!r}")
    return rate


@dataclass(frozen=True)
class Skew:
    """What makes clients differ beyond their label mix (all zero: no skew, no noise)."""

    text_only_clients: float | int = 0
    image_only_clients: float | int = 0
    missing_text_rate: float = 0.0  # per meme, on clients that keep both modalities
    missing_image_rate: float = 0.0
    label_noise: float | Sequence[float] = 0.0  # one flip rate for all, or one per client
    seed: int = 0

    @classmethod
    def from_config(cls, partition: Mapping[str, Any], seed: int) -> Skew:
        """Read the skew keys of a `partition:` config (absent keys mean no skew)."""
        given = {k: partition[k] for k in SKEW_KEYS if k in partition and partition[k] is not None}
        if isinstance(given.get("label_noise"), Sequence) and not isinstance(given["label_noise"], str):
            given["label_noise"] = tuple(float(x) for x in given["label_noise"])
        return cls(seed=seed, **given)

    def roles(self, num_clients: int) -> list[str]:
        """Return each client's role: 'both', 'text_only' or 'image_only' (a seeded choice of clients)."""
        n_text = client_count(self.text_only_clients, num_clients, "text_only_clients")
        n_image = client_count(self.image_only_clients, num_clients, "image_only_clients")
        if n_text + n_image > num_clients:
            raise ValueError(
                f"partition.text_only_clients ({n_text}) + image_only_clients ({n_image}) "
                f"exceed num_clients={num_clients}"
            )
        order = np.random.default_rng([self.seed, 7001]).permutation(num_clients).tolist()
        roles = ["both"] * num_clients
        for rank, client in enumerate(order):
            if rank < n_text:
                roles[client] = "text_only"
            elif rank < n_text + n_image:
                roles[client] = "image_only"
        return roles

    def noise_of(self, partition_id: int, num_clients: int) -> float:
        """Return client `partition_id`'s label flip rate."""
        if isinstance(self.label_noise, (int, float)):
            return _rate(self.label_noise, "label_noise")
        if len(self.label_noise) != num_clients:
            raise ValueError(
                f"partition.label_noise lists {len(self.label_noise)} rates for num_clients={num_clients}; "
                "give one rate per client or a single rate"
            )
        return _rate(self.label_noise[partition_id], f"label_noise[{partition_id}]")


@dataclass
class SkewFacts:
    """What the skew did to one client, for the run directory and `fedmemes data inspect`."""

    modality: str = "both"
    label_noise: float = 0.0
    n_flipped: int = 0
    n_dropped: int = 0  # memes left with no modality at all (e.g. captionless memes on a text-only client)


def apply_skew(memes: list[Meme], skew: Skew, partition_id: int, num_clients: int) -> tuple[list[Meme], SkewFacts]:
    """Mask modalities and flip labels of one client's memes; return them and what was done."""
    role = skew.roles(num_clients)[partition_id]
    miss_text = _rate(skew.missing_text_rate, "missing_text_rate")
    miss_image = _rate(skew.missing_image_rate, "missing_image_rate")
    noise = skew.noise_of(partition_id, num_clients)
    facts = SkewFacts(modality=role, label_noise=noise)
    # One stream per client, four draws per meme whatever the settings: changing one rate
    # does not reshuffle which memes the others hit.
    draws = np.random.default_rng([skew.seed, partition_id, 7002]).random((len(memes), 4))
    out: list[Meme] = []
    for meme, (u_text, u_image, coin, u_flip) in zip(memes, draws, strict=True):
        has_text = meme.has_text and role != "image_only"
        has_image = meme.has_image and role != "text_only"
        drop_text, drop_image = u_text < miss_text, u_image < miss_image
        if drop_text and drop_image:  # a meme never loses both by chance: keep one at random
            drop_text, drop_image = coin < 0.5, coin >= 0.5
        if drop_text and has_image:
            has_text = False
        if drop_image and has_text:
            has_image = False
        if not (has_text or has_image):
            facts.n_dropped += 1
            continue
        label = meme.label
        if u_flip < noise:
            label = 1 - label
            facts.n_flipped += 1
        if (has_text, has_image, label) != (meme.has_text, meme.has_image, meme.label):
            meme = replace(meme, has_text=has_text, has_image=has_image, label=label)
        out.append(meme)
    return out, facts
