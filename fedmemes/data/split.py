"""Who holds what: the server's hold-out splits, client partitions, a client's local validation share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner
from sklearn.model_selection import train_test_split

from fedmemes.data.meme import Meme


@dataclass
class ServerSplits:
    """The clients' pool and the two hold-out splits only the server holds."""

    pool: list[Meme]  # partitioned among clients
    val: list[Meme]  # scored every round, picks the best round
    test: list[Meme]  # scored once, with the best round's model


def _stratified(memes: list[Meme], share: float, seed: int) -> tuple[list[Meme], list[Meme]]:
    labels = [m.label for m in memes]
    stratify = labels if min(labels.count(0), labels.count(1)) >= 2 else None
    rest, held = train_test_split(memes, test_size=share, random_state=seed, stratify=stratify)
    return list(rest), list(held)


def server_splits(splits: dict[str, list[Meme]], validation_split: float, seed: int) -> ServerSplits:
    """Give the server dev_seen/test_seen when present, else carve a stratified share of train.

    With only `train`, `validation_split` of it is held out and halved into val and test.
    Any train row whose id is also in a hold-out split is dropped, so no hold-out meme
    ever reaches a client.
    """
    if "train" not in splits:
        raise ValueError(f"the dataset has no 'train' split (found {sorted(splits)}); clients need one")
    pool = splits["train"]
    val, test = splits.get("dev_seen"), splits.get("test_seen")
    if val is None or test is None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"dataset.validation_split={validation_split} must be in (0, 1) when the data has no dev_seen/test_seen")
        pool, held = _stratified(pool, validation_split, seed)
        carved_val, carved_test = _stratified(held, 0.5, seed)
        val = val if val is not None else carved_val
        test = test if test is not None else carved_test
    held_ids = {m.id for m in val} | {m.id for m in test}
    return ServerSplits(pool=[m for m in pool if m.id not in held_ids], val=val, test=test)


def client_partition(pool: list[Meme], partitioner: Partitioner, partition_id: int, seed: int) -> list[Meme]:
    """Return client `partition_id`'s memes, as the flwr-datasets `partitioner` assigns them."""
    # Shuffle first: IidPartitioner cuts contiguous shards, and files are often sorted.
    rows = np.random.default_rng(seed).permutation(len(pool)).tolist()
    partitioner.dataset = Dataset.from_dict({"row": rows, "label": [pool[i].label for i in rows]})
    if not 0 <= partition_id < partitioner.num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{partitioner.num_partitions - 1}")
    rows = partitioner.load_partition(partition_id)["row"]
    return [pool[i] for i in rows]


def local_validation(memes: list[Meme], share: float, seed: int) -> tuple[list[Meme], list[Meme]]:
    """Keep back `share` of a client's memes for its own validation (train, val)."""
    if share <= 0.0 or len(memes) < 4:
        return memes, []
    return _stratified(memes, share, seed)
