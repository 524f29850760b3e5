"""Seeded client sampling: exactly clients_per_round nodes per round, for any strategy, recorded per round."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.common import MessageType

from fedmemes.config import build_strategy, load_config
from fedmemes.strategies.sampling import SampleRule, seeded_sample

pytestmark = pytest.mark.usefixtures("server_identity")  # conftest: Messages read the run id from it


ARRAYS = ArrayRecord({"h.w": Array(np.zeros(2, dtype=np.float32))})


class FakeGrid:
    """Just what configure_* reads: the connected node ids (a set, as Flower's LinkState returns)."""

    def __init__(self, n: int) -> None:
        self.nodes = {1_000_003 * (i + 1) % 2**61 for i in range(n)}

    def get_node_ids(self) -> set[int]:
        return set(self.nodes)


def _rounds(overrides: str, n: int, rounds: int = 8, phase: str = "train") -> tuple[list[list[int]], dict]:
    reports: dict[int, dict] = {}
    strategy = build_strategy(
        load_config(overrides), sample_report_fn=lambda r, facts: reports.setdefault(r, {}).update(facts)
    )
    grid, picked = FakeGrid(n), []
    for r in range(1, rounds + 1):
        configure = strategy.configure_train if phase == "train" else strategy.configure_evaluate
        msgs = list(configure(r, ARRAYS, ConfigRecord(), grid))
        assert all(
            m.metadata.message_type == (MessageType.TRAIN if phase == "train" else MessageType.EVALUATE) for m in msgs
        )
        picked.append(sorted(m.metadata.dst_node_id for m in msgs))
        assert set(picked[-1]) <= grid.nodes
    return picked, reports


def test_clients_per_round_trains_exactly_k_and_the_sample_changes():
    picked, reports = _rounds("num_clients=20 clients_per_round=5", 20)
    assert [len(p) for p in picked] == [5] * 8 and all(len(set(p)) == 5 for p in picked)
    assert len({tuple(p) for p in picked}) > 1  # not always the same 5
    assert len(set().union(*picked)) > 10  # over 8 rounds most clients get a turn
    assert [reports[r]["sampled"] for r in range(1, 9)] == picked  # what metrics.json records is what was sent


def test_sample_is_seeded_by_random_seed_and_round():
    a, _ = _rounds("num_clients=20 clients_per_round=5 random_seed=1", 20, rounds=4)
    b, _ = _rounds("num_clients=20 clients_per_round=5 random_seed=1", 20, rounds=4)
    c, _ = _rounds("num_clients=20 clients_per_round=5 random_seed=2", 20, rounds=4)
    assert a == b and a != c


def test_fraction_train_still_samples_when_clients_per_round_is_unset():
    picked, _ = _rounds("num_clients=20 server.strategy.fraction_train=0.25", 20, rounds=3)
    assert [len(p) for p in picked] == [5, 5, 5]
    everyone, _ = _rounds("num_clients=20", 20, rounds=1)  # the default: all clients train
    assert len(everyone[0]) == 20


def test_clients_per_round_wins_over_fraction_train():
    picked, _ = _rounds("num_clients=20 clients_per_round=3 server.strategy.fraction_train=0.5", 20, rounds=2)
    assert [len(p) for p in picked] == [3, 3]


def test_evaluation_sampling_is_configured_the_same_way():
    none, _ = _rounds("num_clients=20 clients_per_round=5", 20, rounds=2, phase="evaluate")
    assert none == [[], []]  # fraction_evaluate=0.0: the server scores its hold-out itself
    picked, reports = _rounds(
        "num_clients=20 clients_per_round=5 clients_per_eval_round=4", 20, rounds=3, phase="evaluate"
    )
    assert [len(p) for p in picked] == [4, 4, 4] and reports[2]["sampled_eval"] == picked[1]


@pytest.mark.parametrize("name", ["fedprox", "fedadam", "krum", "dp_fixed", "modality_aware"])
def test_sampling_wraps_every_strategy_and_leaves_its_settings_alone(name):
    overrides = f"strategy={name} num_clients=20 clients_per_round=5"
    strategy = build_strategy(load_config(overrides), branches={"h.w": "text"})
    inner = getattr(strategy, "strategy", strategy)
    before = (inner.fraction_train, inner.min_train_nodes, inner.min_available_nodes)
    msgs = list(strategy.configure_train(1, ARRAYS, ConfigRecord(), FakeGrid(20)))
    assert len({m.metadata.dst_node_id for m in msgs}) == 5
    assert (inner.fraction_train, inner.min_train_nodes, inner.min_available_nodes) == before
    if name == "fedprox":
        assert msgs[0].content["config"]["proximal-mu"] == inner.proximal_mu


def test_min_available_nodes_never_exceeds_num_clients():
    strategy = build_strategy(load_config("num_clients=3 server.strategy.min_available_nodes=10"))
    assert strategy.sampling.min_available == 3
    strategy.poll_s = 0.0
    assert len(list(strategy.configure_train(1, ARRAYS, ConfigRecord(), FakeGrid(3)))) == 3  # returns: no wait for 10


def test_too_many_clients_per_round_names_the_key():
    with pytest.raises(ValueError, match="clients_per_round=30 .*num_clients=20"):
        build_strategy(load_config("num_clients=20 clients_per_round=30"))


def test_dp_gets_the_sample_size_when_clients_per_round_is_unset():
    strategy = build_strategy(load_config("strategy=dp_fixed num_clients=4 server.strategy.noise_multiplier=0.0"))
    assert (
        strategy.num_sampled_clients == 4
        and len(list(strategy.configure_train(1, ARRAYS, ConfigRecord(), FakeGrid(4)))) == 4
    )


def test_rules():
    assert SampleRule(count=5).size(20) == 5 and SampleRule(fraction=0.1, minimum=3).size(20) == 3
    assert SampleRule(fraction=0.0, minimum=3).size(20) == 0  # Flower: fraction 0 skips the phase
    assert seeded_sample(range(10), 4, 42, 1, "train") == seeded_sample(reversed(range(10)), 4, 42, 1, "train")
