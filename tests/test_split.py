"""Who holds what: hold-out carving and client partitions."""

from pathlib import Path

import pytest
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

from fedmemes.data.meme import Meme
from fedmemes.data.split import client_partition, local_validation, server_splits


def _memes(n: int, start: int = 0, hateful_every: int = 3) -> list[Meme]:
    return [
        Meme(id=str(i), img=Path(f"/x/{i}.png"), text=f"t{i}", label=int(i % hateful_every == 0))
        for i in range(start, start + n)
    ]


def test_original_layout_gives_dev_and_test_to_the_server_only():
    train = _memes(300)
    dev, test = _memes(40, 1000), _memes(60, 2000)
    leaked = train[:5] + [Meme(id="1001", img=Path("/x/a.png"), text="dup", label=0)]  # dev id inside train
    s = server_splits({"train": train + leaked[5:], "dev_seen": dev, "test_seen": test}, 0.2, seed=0)
    assert s.val == dev and s.test == test
    assert {m.id for m in s.pool}.isdisjoint({m.id for m in dev + test})
    assert len(s.pool) == 300


def test_dev_only_carves_just_the_missing_test_share():
    train, dev = _memes(600), _memes(40, 1000)
    s = server_splits({"train": train, "dev_seen": dev}, 0.2, seed=1)
    assert s.val == dev and len(s.test) == 60 and len(s.pool) == 540  # half of 0.2: nothing carved is wasted
    assert {m.id for m in s.test}.isdisjoint({m.id for m in s.pool})


def test_train_only_carves_a_stratified_share():
    train = _memes(600)
    s = server_splits({"train": train}, 0.2, seed=1)
    assert len(s.val) + len(s.test) == 120 and len(s.pool) == 480
    ids = [m.id for m in s.pool + s.val + s.test]
    assert len(ids) == len(set(ids)) == 600
    rate = lambda ms: sum(m.label for m in ms) / len(ms)  # noqa: E731
    assert abs(rate(s.val) - rate(train)) < 0.03 and abs(rate(s.test) - rate(train)) < 0.03
    assert server_splits({"train": train}, 0.2, seed=1).val == s.val  # seeded


def test_missing_train_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'train' split"):
        server_splits({"dev_seen": _memes(10)}, 0.2, 0)


@pytest.mark.parametrize(
    "make", [lambda: IidPartitioner(4), lambda: DirichletPartitioner(4, "label", 0.5, seed=3, min_partition_size=5)]
)
def test_partitions_are_disjoint_complete_and_seeded(make):
    pool = _memes(400)
    parts = [client_partition(pool, make(), pid, seed=7) for pid in range(4)]
    ids = [m.id for p in parts for m in p]
    assert len(ids) == len(set(ids)) == 400
    again = [client_partition(pool, make(), pid, seed=7) for pid in range(4)]
    assert parts == again


def test_iid_shuffles_sorted_files():
    pool = sorted(_memes(400), key=lambda m: m.label)  # all benign first, like a sorted file
    part = client_partition(pool, IidPartitioner(2), 0, seed=0)
    assert 0.2 < sum(m.label for m in part) / len(part) < 0.5


def test_dirichlet_small_alpha_skews_labels():
    pool = _memes(600, hateful_every=2)
    rates = [
        sum(m.label for m in p) / len(p)
        for p in (
            client_partition(pool, DirichletPartitioner(4, "label", 0.1, seed=0, min_partition_size=5), pid, 0)
            for pid in range(4)
        )
    ]
    assert max(rates) - min(rates) > 0.5


def test_bad_partition_id():
    with pytest.raises(ValueError, match="outside 0..1"):
        client_partition(_memes(20), IidPartitioner(2), 2, seed=0)


def test_local_validation_share():
    train, val = local_validation(_memes(100), 0.1, seed=0)
    assert len(val) == 10 and len(train) == 90 and not {m.id for m in train} & {m.id for m in val}


def test_extra_row_keys_reach_the_partitioner_as_columns():
    from flwr_datasets.partitioner import NaturalIdPartitioner

    pool = [Meme(id=str(i), img=Path("/x"), text="t", label=i % 2, meta=(("site", "ab"[i % 2]),)) for i in range(10)]
    part = client_partition(pool, NaturalIdPartitioner("site"), 1, seed=0)
    assert sorted(int(m.id) for m in part) == [1, 3, 5, 7, 9]


def test_partitioner_failure_names_client_and_fix():
    with pytest.raises(ValueError, match=r"client 5 of 6 .*num_clients=5 or less"):
        client_partition(_memes(4), IidPartitioner(6), 5, seed=0)
