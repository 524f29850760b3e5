"""Every partition config: sizes add up, no overlap, seeded, and its kind of skew really shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from fedmemes.config import load_config
from fedmemes.data.meme import Meme
from fedmemes.data.partitioners import PartitionError, partitioner_spec
from fedmemes.data.split import client_partition
from fedmemes.federation.node_datasets import client_split, split_facts

CONF = Path(__file__).parents[1] / "fedmemes" / "conf" / "partition"
POOLED = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "per_client_dirs")


def _pool(n: int = 300, clients: int = 3) -> list[Meme]:
    """n memes, 40% hateful, each naming one of `clients` sites (for partition=natural)."""
    return [
        Meme(
            id=str(i),
            img=Path(f"/x/{i}.png"),
            text=f"t{i}",
            label=int(i % 5 < 2),
            meta=(("client", f"site{i % clients}"),),
        )
        for i in range(n)
    ]


def _parts(name: str, num: int = 3, seed: int = 42, extra: str = "") -> list[list[Meme]]:
    cfg = load_config(f"partition={name} num_clients={num} random_seed={seed} {extra}")
    spec = partitioner_spec(OmegaConf.to_container(cfg.partition, resolve=True))
    return [client_partition(_pool(), instantiate(spec, num_partitions=num), pid, seed) for pid in range(num)]


def _hate(memes: list[Meme]) -> float:
    return sum(m.label for m in memes) / len(memes)


@pytest.mark.parametrize("name", POOLED)
def test_sizes_add_up_without_overlap_and_seeded(name: str) -> None:
    parts = _parts(name)
    ids = [m.id for p in parts for m in p]
    assert len(ids) == len(set(ids)) == 300 and all(parts)
    assert [[m.id for m in p] for p in _parts(name)] == [[m.id for m in p] for p in parts]


def test_stratified_gives_every_client_the_global_ratio() -> None:
    parts = _parts("stratified", num=4)
    assert sorted(len(p) for p in parts) == [75, 75, 75, 75]
    assert all(abs(_hate(p) - 0.4) <= 0.02 for p in parts)


def test_dirichlet_small_alpha_is_visibly_skewed() -> None:
    skewed = [_hate(p) for p in _parts("dirichlet", num=4, extra="partition.alpha=0.1 partition.min_partition_size=5")]
    assert max(skewed) - min(skewed) > 0.5


def test_pathological_one_label_per_client() -> None:
    parts = _parts("pathological", num=4)
    assert all(len({m.label for m in p}) == 1 for p in parts)
    assert {p[0].label for p in parts} == {0, 1}


@pytest.mark.parametrize("name", ["quantity", "quantity_exponential"])
def test_quantity_sizes_grow(name: str) -> None:
    sizes = [len(p) for p in _parts(name, num=4)]
    assert sizes == sorted(sizes) and sizes[-1] >= 3 * sizes[0]


def test_natural_follows_the_client_column_and_checks_the_count() -> None:
    parts = _parts("natural")
    assert [{dict(m.meta)["client"] for m in p} for p in parts] == [{"site0"}, {"site1"}, {"site2"}]
    for num in (2, 4):
        with pytest.raises(PartitionError, match="names 3 clients.*set num_clients=3"):
            _parts("natural", num=num)


def _folder(root: Path, n: int, start: int = 0) -> Path:
    """A small folder in the original layout with n train rows (half hateful)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 40, 40)).save(root / "img" / "a.png")
    rows = [{"id": start + i, "img": "img/a.png", "label": i % 2, "text": f"caption {i}"} for i in range(n)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_per_client_dirs_reads_each_clients_own_folder(tmp_path: Path) -> None:
    server = _folder(tmp_path / "server", 40)
    a, b = _folder(tmp_path / "a", 12, 1000), _folder(tmp_path / "b", 30, 2000)
    base = f"dataset=hateful_memes dataset.root={server} partition=per_client_dirs local_val_share=0"
    cfg = load_config(f"{base} partition.dirs=[{a},{b}]")
    assert {m.id for m in client_split(cfg, 0, 2).train} == {str(1000 + i) for i in range(12)}
    assert len(client_split(cfg, 1, 2).train) == 30
    # Deployment: the node config's data-dir wins over the list.
    assert len(client_split(load_config(base), 1, 2, data_dir=str(a)).train) == 12
    with pytest.raises(PartitionError, match="data-dir"):
        client_split(load_config(base), 0, 2)


def test_empty_client_stops_with_its_name_and_the_fix(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", 8)
    cfg = load_config(
        f"dataset=hateful_memes dataset.root={root} dataset.validation_split=0.5 partition=iid num_clients=6"
    )
    with pytest.raises(ValueError, match=r"client \d of 6 .*num_clients=5"):
        split_facts(cfg)


def test_dirichlet_that_cannot_fill_clients_names_the_fix(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", 40)
    cfg = load_config(f"dataset=hateful_memes dataset.root={root} num_clients=5 partition.alpha=0.05")
    with pytest.raises(ValueError, match="fewer clients.*larger partition.alpha"):
        split_facts(cfg)
