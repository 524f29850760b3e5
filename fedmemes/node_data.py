"""What each node trains or scores on, built from the config: cached per process, on disk per node."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from hydra.utils import instantiate
from omegaconf import DictConfig

from fedmemes.config import load_config
from fedmemes.data.features import MemeTensors, build_tensors
from fedmemes.data.meme import Meme
from fedmemes.data.split import ServerSplits, client_partition, local_validation, server_splits

log = logging.getLogger(__name__)


def load_splits(cfg: DictConfig) -> dict[str, list[Meme]]:
    """Load (and validate) every split of the configured source."""
    return instantiate(cfg.dataset.source).load()


def holdout(cfg: DictConfig, splits: dict[str, list[Meme]] | None = None) -> ServerSplits:
    """Split the source into the clients' pool and the server's hold-out."""
    splits = splits if splits is not None else load_splits(cfg)
    return server_splits(splits, cfg.dataset.validation_split, cfg.random_seed)


def client_memes(cfg: DictConfig, partition_id: int, num_partitions: int) -> tuple[list[Meme], list[Meme]]:
    """Return (train, local validation) memes of one client."""
    partitioner = instantiate(cfg.partition, num_partitions=num_partitions)
    mine = client_partition(holdout(cfg).pool, partitioner, partition_id, cfg.random_seed)
    return local_validation(mine, cfg.local_val_share, cfg.random_seed + partition_id)


@dataclass
class ClientData:
    """A client's tensors: what it trains on and what it keeps back for validation."""

    train: MemeTensors
    val: MemeTensors


def _tensors(cfg: DictConfig, memes: list[Meme]) -> MemeTensors:
    encoder = instantiate(cfg.model.text_encoder)
    return build_tensors(memes, encoder, cfg.image_size, cfg.cache_dir)


@functools.lru_cache(maxsize=4)
def client_data(overrides: str, partition_id: int, num_partitions: int) -> ClientData:
    """Tensors of one client, kept in memory for the life of the process (a Ray actor lives all run)."""
    cfg = load_config(overrides)
    train, val = client_memes(cfg, partition_id, num_partitions)
    if not train:
        raise ValueError(
            f"client {partition_id} of {num_partitions} got no training memes; "
            "use fewer clients (num_clients=...) or a larger partition.alpha"
        )
    return ClientData(train=_tensors(cfg, train), val=_tensors(cfg, val))


@functools.lru_cache(maxsize=2)
def server_data(overrides: str) -> tuple[MemeTensors, MemeTensors]:
    """Tensors of the server's hold-out: (val, test)."""
    cfg = load_config(overrides)
    split = holdout(cfg)
    return _tensors(cfg, split.val), _tensors(cfg, split.test)
