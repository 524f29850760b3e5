"""Secure aggregation (server.secagg=true): the real ServerApp and ClientApps run Flower's SecAgg+ stages in process.

The strategy must get one reply per round, the unmasked weighted average, equal to plain FedAvg's model; a client that
drops at the collect-masked-vectors stage is survived at reconstruction_threshold; the strategies that read individual
updates are refused at config time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID

from fedmemes.config import build_strategy, load_config
from fedmemes.config_schema import ConfigError
from fedmemes.federation import client_app
from fedmemes.federation.testing import run_in_process
from fedmemes.privacy.client_secagg import secagg_mod
from fedmemes.privacy.secagg import CLIENTS_KEY
from fedmemes.strategies.validation import ReplyChecks

# 3 clients of ~50 memes; every bound off, so plain FedAvg is the exact weighted average SecAgg+ computes.
BASE = "experiment=strategy_smoke num_clients=3 num_rounds=1 server.max_update_norm=null server.max_client_weight=null"
# Quantization error per parameter <= clients * clipping_range * max_weight / (quantization_range * total examples)
# = 3 * 8 * 1000 / (2**28 * ~150) ~ 6e-7, well under the 1e-5 the test asks; 3 * 2**28 < modulus_range = 2**32.
SECAGG = (
    "server.secagg=true server.secagg_params.num_shares=3 server.secagg_params.reconstruction_threshold=2 "
    "server.secagg_params.max_weight=1000.0 server.secagg_params.quantization_range=268435456"
)


def _model(run_dir: Path, name: str = "final") -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run_dir / f"{name}.safetensors")


def recording_client(seen: dict[int, tuple[dict[str, np.ndarray], int]], drop: int | None = None) -> Any:
    """fedmemes' ClientApp (same handlers, same mod) that records each node's plain reply; node `drop` fails at the
    collect-masked-vectors stage, the one where it would train."""
    app = ClientApp()

    @app.train(mods=[secagg_mod])
    def train(msg: Message, context: Context) -> Message:
        if context.node_id == drop:
            raise RuntimeError("node went away mid-round")
        reply = client_app.train(msg, context)
        arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
        seen[context.node_id] = (arrays, int(reply.content["metrics"]["num-examples"]))
        return reply

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return client_app.evaluate(msg, context)

    def call(msg: Message, context: Context) -> Message:
        try:
            return app(msg, context)
        except Exception as err:  # noqa: BLE001  as a SuperNode does: the exception becomes an error reply
            return Message(Error(code=0, reason=str(err)), reply_to=msg)

    return call


def weighted_average(seen: dict[int, tuple[dict[str, np.ndarray], int]]) -> dict[str, np.ndarray]:
    total = sum(n for _, n in seen.values())
    names = next(iter(seen.values()))[0]
    return {k: sum(a[k].astype(np.float64) * n for a, n in seen.values()) / total for k in names}


@dataclass
class Runs:
    plain: Path
    secure: Path
    secure_metrics: dict[str, Any]
    received: list[list[Message]]  # what the strategy's aggregate_train got, per round
    seen: dict[int, tuple[dict[str, np.ndarray], int]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Runs:
    """One round on 3 clients with secagg off, then on (same seeds), recording what the strategy receives."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread, for a module fixture
    plain, secure = tmp_path_factory.mktemp("plain"), tmp_path_factory.mktemp("secure")
    received: list[list[Message]] = []
    seen: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    original = ReplyChecks.aggregate_train

    def spy(self: Any, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        received.append(replies)
        return original(self, server_round, replies)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FEDMEMES_CACHE", str(cache_dir))
            run_in_process(f"{BASE} cache_dir={cache_dir}", plain, 3)
            patch.setattr(ReplyChecks, "aggregate_train", spy)
            metrics = run_in_process(f"{BASE} {SECAGG} cache_dir={cache_dir}", secure, 3, recording_client(seen))
    finally:
        torch.set_num_threads(torch_threads)
    return Runs(plain, secure, metrics, received, seen)


def test_secure_aggregate_equals_fedavg(runs: Runs) -> None:
    plain, secure = _model(runs.plain), _model(runs.secure)
    assert set(plain) == set(secure)
    diff = max(float(np.abs(plain[k].astype(np.float64) - secure[k]).max()) for k in plain)
    assert diff < 1e-5, diff  # measured here: ~1e-6 (stochastic quantization), float64 into the mod (client_secagg.py)
    assert all(secure[k].dtype == plain[k].dtype for k in plain)  # the global model keeps its dtypes


def test_the_strategy_receives_only_the_aggregate(runs: Runs) -> None:
    assert len(runs.received) == 1 and len(runs.received[0]) == 1  # one round, one reply: never a client's own
    reply = runs.received[0][0]
    assert reply.metadata.src_node_id == SUPERLINK_NODE_ID  # made by the server, sent by no SuperNode
    metrics = reply.content["metrics"]
    assert sorted(runs.seen) == [0, 1, 2]
    assert metrics["num-examples"] == sum(n for _, n in runs.seen.values()) and metrics[CLIENTS_KEY] == 3
    arrays = {k: a.numpy() for k, a in reply.content["arrays"].items()}
    expected = weighted_average(runs.seen)
    assert max(float(np.abs(arrays[k] - expected[k]).max()) for k in expected) < 1e-5
    for own, _ in runs.seen.values():  # no client's update is what the strategy holds
        assert max(float(np.abs(arrays[k] - own[k]).max()) for k in own) > 1e-4
    row = runs.secure_metrics["rounds"][1]
    assert row["clients"] == 3 and row["secagg_aggregated"] == 3 and row["secagg_dropped"] == []
    assert row["replies"] == 1 and row["dropped_replies"] == 0 and row["kept_previous_model"] == 0


@pytest.mark.slow  # a run of its own (~5 s)
def test_a_client_dropping_at_the_masked_vectors_stage_is_survived(
    tmp_path: Path, cache_dir: Path, one_thread: None
) -> None:
    seen: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    metrics = run_in_process(f"{BASE} {SECAGG} cache_dir={cache_dir}", tmp_path, 3, recording_client(seen, drop=2))
    row = metrics["rounds"][1]
    assert sorted(seen) == [0, 1] and row["secagg_dropped"] == [2] and row["secagg_aggregated"] == 2
    assert row["kept_previous_model"] == 0 and row["clients"] == 2
    final, expected = _model(tmp_path), weighted_average(seen)
    assert max(float(np.abs(final[k] - expected[k]).max()) for k in expected) < 1e-5


@pytest.mark.slow  # a run of its own (~5 s)
def test_too_many_dropouts_keep_the_previous_model(tmp_path: Path, cache_dir: Path, one_thread: None) -> None:
    seen: dict[int, tuple[dict[str, np.ndarray], int]] = {}
    # threshold 3 of 3 shares: no client may drop; the round ends with an error reply and the model stays
    overrides = f"{BASE} {SECAGG} server.secagg_params.num_shares=1.0 server.secagg_params.reconstruction_threshold=1.0"
    metrics = run_in_process(f"{overrides} cache_dir={cache_dir}", tmp_path, 3, recording_client(seen, drop=1))
    row = metrics["rounds"][1]
    assert row["kept_previous_model"] == 1 and row["dropped_replies"] == 1
    assert "secure aggregation halted" in row["dropped"][0]


@pytest.mark.parametrize(
    "strategy",
    [
        "fedmedian",
        "fedtrimmedavg",
        "krum",
        "multikrum",
        "bulyan",
        "qfedavg",
        "performance_weighted",
        "modality_aware",
        "scaffold",
        "feddyn",
        "dp_fixed",
        "dp_adaptive",
    ],
)
def test_strategies_that_read_each_update_are_refused(strategy: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^server\.secagg=true cannot run server\.strategy \w+: .*server\.secagg=false"
    ):
        build_strategy(load_config(f"strategy={strategy} num_clients=3 server.secagg=true"))


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedavg_slr"])
def test_strategies_on_the_sum_are_allowed(strategy: str) -> None:
    assert build_strategy(load_config(f"strategy={strategy} server.secagg=true")) is not None


def test_bad_secagg_params_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="server.secagg_params: .*num_shares"):
        build_strategy(load_config("server.secagg=true server.secagg_params.num_shares=2"))
    with pytest.raises(ConfigError, match="server.secagg=true needs at least 2 clients per round"):
        build_strategy(load_config("server.secagg=true num_clients=1"))
    with pytest.raises(ConfigError, match="100 clients x quantization_range=67108864 .* would wrap"):
        build_strategy(load_config("server.secagg=true num_clients=100"))  # 100 x 2**26 >= 2**32
    with pytest.raises(ConfigError, match="server.secagg_params.quantization_range"):
        load_config("server.secagg_params.quantization_range=0.5")
