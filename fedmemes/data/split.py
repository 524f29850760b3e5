"""Who holds what: the server's hold-out splits, client partitions, a client's local validation share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from fedmemes.data.meme import Meme
from fedmemes.data.partitioners import PartitionError


@dataclass
class ServerSplits:
    """The clients' pool and the two hold-out splits only the server holds."""

    pool: list[Meme]  # partitioned among clients
    val: list[Meme]  # scored every round, picks the best round
    test: list[Meme]  # scored once, with the best round's model


def _stratified(memes: list[Meme], share: float, seed: int) -> tuple[list[Meme], list[Meme]]:
    from sklearn.model_selection import train_test_split  # lazily: engine._f1 says why

    labels = [m.label for m in memes]
    stratify = labels if min(labels.count(0), labels.count(1)) >= 2 else None
    rest, held = train_test_split(memes, test_size=share, random_state=seed, stratify=stratify)
    return list(rest), list(held)


def server_splits(splits: dict[str, list[Meme]], validation_split: float, seed: int) -> ServerSplits:
    """Give the server dev_seen/test_seen when present, else carve a stratified share of train.

    With only `train`, `validation_split` of it is held out and halved into val and test; with
    one of the two missing (the first release has no labelled test), half that share stands in
    for it. Any train row whose id is also in a hold-out split is dropped, so no hold-out meme
    ever reaches a client.
    """
    if "train" not in splits:
        raise ValueError(f"the dataset has no 'train' split (found {sorted(splits)}); clients need one")
    pool = splits["train"]
    val, test = splits.get("dev_seen"), splits.get("test_seen")
    if val is None or test is None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(
                f"dataset.validation_split={validation_split} must be in (0, 1) when the data has no dev_seen/test_seen"
            )
        both = val is None and test is None
        pool, held = _stratified(pool, validation_split if both else validation_split / 2, seed)
        if both:
            val, test = _stratified(held, 0.5, seed)
        elif val is None:
            val = held
        else:
            test = held
    assert val is not None and test is not None  # each branch above filled the missing one(s)
    held_ids = {m.id for m in val} | {m.id for m in test}
    return ServerSplits(pool=[m for m in pool if m.id not in held_ids], val=val, test=test)


def client_partition(pool: list[Meme], partitioner: Partitioner, partition_id: int, seed: int) -> list[Meme]:
    """Return client `partition_id`'s memes, as the flwr-datasets `partitioner` assigns them.

    The partitioner sees the columns `row`, `label` and every extra key of the rows
    (e.g. `client` for partition=natural).
    """
    # Shuffle first: IidPartitioner cuts contiguous shards, and files are often sorted.
    rows = np.random.default_rng(seed).permutation(len(pool)).tolist()
    columns: dict[str, list[int]] = {"row": rows, "label": [pool[i].label for i in rows]}
    for key in sorted({k for m in pool for k, _ in m.meta} - set(columns)):
        columns[key] = [dict(pool[i].meta).get(key, "") for i in rows]
    partitioner.dataset = Dataset.from_dict(columns)
    # Some partitioners (Dirichlet) compute the whole split when asked for num_partitions.
    num = getattr(partitioner, "_num_partitions", None) or partitioner.num_partitions
    if not 0 <= partition_id < num:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num - 1}")
    try:
        rows = partitioner.load_partition(partition_id)["row"]
    except PartitionError:
        raise
    except (ValueError, IndexError) as e:  # flwr-datasets' own messages do not say what to change here
        raise ValueError(
            f"{type(partitioner).__name__} cannot give client {partition_id} of {num} a share of {len(pool)} "
            f"memes ({e}); use fewer clients (num_clients={max(1, num - 1)} or less), a larger "
            "partition.alpha, or a smaller partition.min_partition_size"
        ) from e
    return [pool[i] for i in rows]


def local_validation(memes: list[Meme], share: float, seed: int) -> tuple[list[Meme], list[Meme]]:
    """Keep back `share` of a client's memes for its own validation (train, val)."""
    if share <= 0.0 or len(memes) < 4:
        return memes, []
    return _stratified(memes, share, seed)
