"""Per-branch aggregation: each block is averaged over the clients that trained it, by their modality counts."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedmemes.strategies.strategy_utils import ReplyAverage, average_arrays, first_arrays

log = logging.getLogger(__name__)

# Which count in a client's train metrics says how many of its samples trained each block.
DEFAULT_COUNT_KEYS = {"text": "n_text", "image": "n_image", "joint": "n_both"}


class ModalityAwareAvg(ReplyAverage):
    """FedAvg per block: text branch weighted by `n_text`, image branch by `n_image`, the rest by `n_both`.

    `branches` maps every tensor name to its block ('text', 'image', 'joint'); it comes from the
    model (`MemeClassifier.branches()`), never from guessing at names. Clients with a zero count
    do not vote on that block; a block no client trained keeps its previous global value.
    """

    client_metrics_needed = ("modality_counts",)  # the site policy share every client must allow (site_policy.py)

    def __init__(
        self,
        *args: Any,
        branches: Mapping[str, str] | None = None,
        count_keys: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.branches = dict(branches or {})
        self.count_keys = dict(count_keys or DEFAULT_COUNT_KEYS)
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global model: untrained blocks keep it."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def _blocks(self, keys: Iterable[str]) -> dict[str, list[str]]:
        if not self.branches:
            raise ValueError(
                "modality_aware needs the model's branch map: build it with "
                "fedmemes.config.build_strategy(cfg, branches=model.branches())"
            )
        unknown = [k for k in keys if self.branches.get(k) not in self.count_keys]
        if unknown:
            raise KeyError(
                f"tensors {unknown[:3]} have no block in the model's branch map "
                f"(blocks: {sorted(self.count_keys)}); the map must come from the model being trained"
            )
        blocks: dict[str, list[str]] = {b: [] for b in self.count_keys}
        for key in keys:
            blocks[self.branches[key]].append(key)
        return blocks

    def average(self, server_round: int, contents: list[RecordDict], metrics: list[MetricRecord]) -> ArrayRecord:
        """Average each block over the clients whose count for it is positive."""
        records = [first_arrays(c) for c in contents]
        missing = sorted({k for m in metrics for k in self.count_keys.values() if k not in m})
        if missing:
            raise KeyError(
                f"modality_aware needs metrics {missing} in every train reply (clients send n_text, n_image, n_both)"
            )
        merged: dict[str, Array] = {}
        for block, keys in self._blocks(records[0].keys()).items():
            counts = [float(cast(float, m[self.count_keys[block]])) for m in metrics]  # scalar: checked replies
            voters = [i for i, c in enumerate(counts) if c > 0]
            if not voters:
                log.info("round %d: no client trained the %s block; it keeps its previous value", server_round, block)
                if self.current_arrays is None:
                    raise RuntimeError("configure_train was not called before aggregate_train")
                merged.update({k: self.current_arrays[k] for k in keys})
                continue
            averaged = average_arrays([records[i] for i in voters], [counts[i] for i in voters], keys)
            merged.update({k: Array(v) for k, v in averaged.items()})
        return ArrayRecord({k: merged[k] for k in records[0]})
