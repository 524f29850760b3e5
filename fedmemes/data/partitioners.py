"""Partitioners flwr-datasets lacks: stratified, natural (with a client count), per-client folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from flwr_datasets.partitioner import NaturalIdPartitioner, Partitioner

# Keys of `partition:` that describe a client's modality skew and label noise, not the
# partitioner itself (see fedmemes.data.skew); they are stripped before instantiation.
SKEW_KEYS = ("text_only_clients", "image_only_clients", "missing_text_rate", "missing_image_rate", "label_noise")


class PartitionError(ValueError):
    """A partition that cannot be made; the message already names the fix."""


def partitioner_spec(partition: dict[str, Any]) -> dict[str, Any]:
    """Return the `partition:` config without the skew keys (what `instantiate` may see)."""
    return {k: v for k, v in partition.items() if k not in SKEW_KEYS}


class StratifiedPartitioner(Partitioner):
    """Every client gets (within one meme) the global label ratio and an equal share of rows."""

    def __init__(self, num_partitions: int, partition_by: str = "label", seed: int = 42) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._seed = seed
        self._indices: dict[int, list[int]] | None = None

    @property
    def num_partitions(self) -> int:
        """Return the number of clients."""
        return self._num_partitions

    def _assign(self) -> dict[int, list[int]]:
        rng = np.random.default_rng(self._seed)
        labels = np.asarray(self.dataset[self._partition_by])
        out: dict[int, list[int]] = {p: [] for p in range(self._num_partitions)}
        offset = 0
        for value in sorted(set(labels.tolist())):
            rows = rng.permutation(np.flatnonzero(labels == value))
            # Deal rows like cards, continuing where the last label stopped: sizes stay within one.
            for k, row in enumerate(rows.tolist()):
                out[(offset + k) % self._num_partitions].append(row)
            offset += len(rows)
        return out

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """Return client `partition_id`'s rows."""
        if self._indices is None:
            self._indices = self._assign()
        return self.dataset.select(sorted(self._indices[partition_id]))


class NaturalPartitioner(NaturalIdPartitioner):
    """A column of the data names each meme's client (data that arrives already split).

    Clients are the column's distinct values in sorted order; `num_partitions` must equal
    their count, so `num_clients` and the data cannot silently disagree.
    """

    def __init__(self, num_partitions: int, partition_by: str = "client") -> None:
        super().__init__(partition_by=partition_by)
        self._expected = num_partitions

    @property
    def num_partitions(self) -> int:
        """Return num_clients (load_partition checks that the data names as many)."""
        return self._expected

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """Return the rows whose column value is the `partition_id`-th distinct value."""
        column = self._partition_by
        if column not in self.dataset.column_names:
            raise PartitionError(
                f"partition=natural reads the client of each meme from the key '{column}' of every "
                f"jsonl row, and no row has it; add it to the rows or set partition.partition_by=KEY"
            )
        values = self.dataset[column]
        if any(v in (None, "") for v in values):
            raise PartitionError(f"partition=natural: some rows lack the key '{column}'; give every row its client")
        found = len(set(values))
        if found != self._expected:
            raise PartitionError(
                f"partition=natural: the data names {found} clients in '{column}' "
                f"({', '.join(sorted(set(values))[:5])}...) but num_clients={self._expected}; "
                f"set num_clients={found}"
            )
        return super().load_partition(partition_id)


class PerClientDirs(Partitioner):
    """Each node reads its own folder (node config `data-dir`) and keeps all of it.

    In a simulation, where nodes have no node config, `dirs` lists one folder per client.
    """

    owns_data = True  # node_datasets reads the client's memes from its folder, not the shared pool

    def __init__(self, num_partitions: int, dirs: Sequence[str] | None = None) -> None:
        super().__init__()
        self._num_partitions = num_partitions
        self.dirs = list(dirs or [])
        if self.dirs and len(self.dirs) != num_partitions:
            raise ValueError(
                f"partition.dirs lists {len(self.dirs)} folders for num_clients={num_partitions}; "
                "give one folder per client"
            )

    @property
    def num_partitions(self) -> int:
        """Return the number of clients."""
        return self._num_partitions

    def data_dir(self, partition_id: int, node_dir: str | None) -> str:
        """Return the folder of client `partition_id`: its node config's, else `dirs[partition_id]`."""
        if node_dir:
            return node_dir
        if self.dirs:
            return self.dirs[partition_id]
        raise PartitionError(
            f"partition=per_client_dirs: client {partition_id} has no folder; start its SuperNode with "
            "--node-config 'partition-id=0 num-partitions=2 data-dir=\"/abs/folder\"' "
            "(or, in a simulation, set partition.dirs=[/abs/a,/abs/b])"
        )

    def load_partition(self, partition_id: int) -> datasets.Dataset:
        """Return every row: the dataset already is this client's own folder."""
        return self.dataset
