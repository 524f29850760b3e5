"""Each node's datasets, built from the config: a client's partition (train + kept-back val), the server's hold-out."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, cast

import torch
from flwr_datasets.partitioner import IidPartitioner
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from fedmemes.config import load_config
from fedmemes.data.features import MemeTensors, build_tensors
from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import DataIssue, Meme, count_kinds
from fedmemes.data.ocr import OcrReader, fill_captions
from fedmemes.data.partitioners import partitioner_spec
from fedmemes.data.report import client_facts
from fedmemes.data.skew import Skew, SkewFacts, apply_skew
from fedmemes.data.split import (
    ServerSplits,
    client_partition,
    local_validation,
    server_splits,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Ocr:
    """What dataset.ocr asks of every source's memes (a hashable lru_cache key)."""

    mode: str
    lang: str
    cache_dir: str

    @classmethod
    def of(cls, cfg: DictConfig) -> _Ocr:
        return cls(str(cfg.dataset.get("ocr", "never")), str(cfg.dataset.get("ocr_lang", "eng")), str(cfg.cache_dir))

    def apply(self, memes: list[Meme]) -> list[Meme]:
        """Fill the captions dataset.ocr asks for (here, so every source, present or future, gets it)."""
        if self.mode == "never":
            return memes
        return fill_captions(memes, self.mode, OcrReader(self.cache_dir, self.lang))


@functools.lru_cache(maxsize=2)
def _load(source_yaml: str, ocr: _Ocr) -> tuple[dict[str, list[Meme]], tuple[DataIssue, ...]]:
    # Keyed by the resolved source config: the CLI, the server and a client in one process
    # validate the (possibly large) folder once.
    source = instantiate(OmegaConf.create(source_yaml))
    splits = {name: ocr.apply(memes) for name, memes in source.load().items()}
    return splits, tuple(getattr(source, "issues", ()))


def load_source(cfg: DictConfig) -> tuple[dict[str, list[Meme]], tuple[DataIssue, ...]]:
    """Load (and validate) every split of the configured source, captions filled per dataset.ocr; also return the
    issues it skipped."""
    return _load(OmegaConf.to_yaml(cfg.dataset.source, resolve=True), _Ocr.of(cfg))


def load_splits(cfg: DictConfig) -> dict[str, list[Meme]]:
    """Load (and validate) every split of the configured source."""
    return load_source(cfg)[0]


def data_issues(cfg: DictConfig) -> dict[str, int]:
    """Count per kind the bad rows the source dropped or kept partly (on_error != raise)."""
    return count_kinds(list(load_source(cfg)[1]))


def holdout(cfg: DictConfig, splits: dict[str, list[Meme]] | None = None) -> ServerSplits:
    """Split the source into the clients' pool and the server's hold-out."""
    splits = splits if splits is not None else load_splits(cfg)
    return server_splits(splits, cfg.dataset.validation_split, cfg.random_seed)


@dataclass
class ClientSplit:
    """A client's memes after partition, modality skew and label noise."""

    train: list[Meme]
    val: list[Meme]
    skew: SkewFacts


class _SplitKey:
    """The config parts that decide every client's memes, compared by a cheap string (lru_cache key)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.key = f"{cfg.dataset}|{cfg.partition}|{cfg.random_seed}|{cfg.cache_dir}"

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SplitKey) and other.key == self.key


@functools.lru_cache(maxsize=2)
def _attached(split: _SplitKey, num_partitions: int) -> tuple[list[Meme], Any, list[tuple[int, ...]] | None]:
    # One partitioner per process holds the pool; a client's rows are then one lookup, not a
    # fresh partition of the whole pool per client (which made N clients cost O(N * pool)).
    cfg = split.cfg
    pool = holdout(cfg).pool
    partitioner = instantiate(
        partitioner_spec(cast(dict[str, Any], OmegaConf.to_container(cfg.partition, resolve=True))),
        num_partitions=num_partitions,
    )
    client_partition(pool, partitioner, 0, cfg.random_seed)  # attaches the pool; raises the fix if client 0 gets none
    return pool, partitioner, _all_rows(partitioner, num_partitions, list(partitioner.load_partition(0)["row"]))


def _all_rows(partitioner: Any, num: int, first: list[int]) -> list[tuple[int, ...]] | None:
    """Every client's rows at once where the partitioner allows it (load_partition costs ~20 ms per client)."""
    rows = partitioner.dataset["row"]
    mapping = getattr(partitioner, "_partition_id_to_indices", None)  # Dirichlet, Shard, Size...: computed all at once
    if isinstance(mapping, dict) and sorted(mapping) == list(range(num)):
        out = [tuple(rows[i] for i in mapping[p]) for p in range(num)]
    elif isinstance(partitioner, IidPartitioner):  # contiguous shards of the shuffled rows (datasets' shard rule)
        div, mod = divmod(len(rows), num)
        starts = [div * p + min(p, mod) for p in range(num + 1)]
        out = [tuple(rows[starts[p] : starts[p + 1]]) for p in range(num)]
    else:
        return None
    return out if list(out[0]) == first else None  # a layout we do not know: fall back to load_partition


@functools.lru_cache(maxsize=65536)  # row numbers only: a few bytes per meme
def _rows(split: _SplitKey, num_partitions: int, partition_id: int) -> tuple[int, ...]:
    pool, partitioner, everyone = _attached(split, num_partitions)
    if everyone is not None:
        return everyone[partition_id]
    try:
        return tuple(partitioner.load_partition(partition_id)["row"])
    except (ValueError, IndexError):  # let client_partition phrase the fix for this client
        cfg = split.cfg
        fresh = instantiate(
            partitioner_spec(cast(dict[str, Any], OmegaConf.to_container(cfg.partition, resolve=True))),
            num_partitions=num_partitions,
        )
        client_partition(pool, fresh, partition_id, cfg.random_seed)
        raise


def _partitioned(cfg: DictConfig, partition_id: int, num_partitions: int) -> tuple[list[Meme], list[Meme]]:
    """Return the pool and client `partition_id`'s memes, from the process-wide partition of the pool."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside 0..{num_partitions - 1}")
    split = _SplitKey(cfg)
    pool = _attached(split, num_partitions)[0]
    return pool, [pool[i] for i in _rows(split, num_partitions, partition_id)]


@functools.lru_cache(maxsize=8)
def _own_folder(folder: str, on_error: str, ocr: _Ocr) -> list[Meme]:
    return ocr.apply(LocalDirSource(folder, on_error=on_error, splits=("train",)).load()["train"])


def client_split(cfg: DictConfig, partition_id: int, num_partitions: int, data_dir: str | None = None) -> ClientSplit:
    """Partition, skew and split one client's memes; stop with the fix if it gets none."""
    partition = cast(dict[str, Any], OmegaConf.to_container(cfg.partition, resolve=True))  # a mapping node
    if getattr(get_class(partition["_target_"]), "owns_data", False):  # per_client_dirs: the node's own folder
        partitioner = instantiate(partitioner_spec(partition), num_partitions=num_partitions)
        folder = partitioner.data_dir(partition_id, data_dir)
        pool = _own_folder(str(folder), str(cfg.dataset.get("on_error", "raise")), _Ocr.of(cfg))
        mine = client_partition(pool, partitioner, partition_id, cfg.random_seed)
    else:
        if data_dir:
            log.warning("node config data-dir=%s is ignored: it is read only with partition=per_client_dirs", data_dir)
        pool, mine = _partitioned(cfg, partition_id, num_partitions)
    mine, facts = apply_skew(mine, Skew.from_config(partition, cfg.random_seed), partition_id, num_partitions)
    train, val = local_validation(mine, cfg.local_val_share, cfg.random_seed + partition_id)
    if not train:
        raise ValueError(
            f"client {partition_id} of {num_partitions} got no training memes "
            f"(partition {partition.get('_target_', '?').rsplit('.', 1)[-1]}, {len(pool)} memes in the pool); "
            f"use fewer clients (num_clients={max(1, num_partitions - 1)}), a larger partition.alpha, "
            "or lower partition.missing_*_rate; `fedmemes data inspect` shows every client's share"
        )
    return ClientSplit(train, val, facts)


def client_memes(
    cfg: DictConfig, partition_id: int, num_partitions: int, data_dir: str | None = None
) -> tuple[list[Meme], list[Meme]]:
    """Return (train, local validation) memes of one client."""
    split = client_split(cfg, partition_id, num_partitions, data_dir)
    return split.train, split.val


def split_facts(cfg: DictConfig) -> list[dict[str, Any]]:
    """Return every client's split facts (the partition is seeded, so this is what clients will get)."""
    facts = []
    for pid in range(cfg.num_clients):
        split = client_split(cfg, pid, cfg.num_clients)
        facts.append(client_facts(pid, split.train, split.val, split.skew))
    return facts


@dataclass
class ClientData:
    """A client's tensors: what it trains on and what it keeps back for validation."""

    train: MemeTensors
    val: MemeTensors


def _tensors(cfg: DictConfig, memes: list[Meme]) -> MemeTensors:
    encoder = instantiate(cfg.model.text_encoder)
    return build_tensors(memes, encoder, cfg.image_size, cfg.cache_dir, _frozen_image_encoder(cfg))


def _frozen_image_encoder(cfg: DictConfig) -> Any:
    """Return the image encoder when it has a frozen part to run here once and cache (efficientnet_lite0, clip)."""
    spec = cfg.model.get("image_encoder")
    if spec is None or not hasattr(get_class(spec._target_), "encode_images"):
        return None  # pixels: the model's own encoder trains on them
    with torch.random.fork_rng(devices=[]):  # building it must not shift the model's seeded initialisation
        return instantiate(spec)


@functools.lru_cache(maxsize=4)
def client_data(overrides: str, partition_id: int, num_partitions: int, data_dir: str | None = None) -> ClientData:
    """Tensors of one client, kept in memory for the life of the process (a Ray actor lives all run)."""
    cfg = load_config(overrides)
    train, val = client_memes(cfg, partition_id, num_partitions, data_dir)
    return ClientData(train=_tensors(cfg, train), val=_tensors(cfg, val))


@functools.lru_cache(maxsize=2)
def server_data(overrides: str) -> tuple[MemeTensors, MemeTensors]:
    """Tensors of the server's hold-out: (val, test)."""
    cfg = load_config(overrides)
    split = holdout(cfg)
    return _tensors(cfg, split.val), _tensors(cfg, split.test)
