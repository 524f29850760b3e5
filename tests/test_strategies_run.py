"""Every conf/strategy/*.yaml runs 2 rounds of the real ServerApp and ClientApp (debug=tiny).

Flower's transport is replaced by `LocalGrid`, which hands each message to the ClientApp in this
process: the strategies, apps, training and metrics.json are the real ones, without Ray's
start-up (about 10 s per run). `fedmemes simulate` covers the Ray engine itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

import fedmemes
from fedmemes.client_app import app as client_app
from fedmemes.server_app import app as server_app

STRATEGIES = sorted(p.stem for p in (Path(fedmemes.__file__).parent / "conf" / "strategy").glob("*.yaml"))
EXTRA = {"bulyan": "num_clients=3"}  # Bulyan needs at least 4f + 3 = 3 clients per round
SMALL = "experiment=strategy_smoke"  # debug=tiny, smaller still (conf/experiment/strategy_smoke.yaml)


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process (node i is partition i)."""

    def __init__(self, num_nodes: int, client: Callable[[Message, Context], Message]) -> None:
        self.num_nodes, self.client, self.sent = num_nodes, client, 0
        self.states = {i: RecordDict() for i in range(num_nodes)}

    def set_run(self, run) -> None:  # noqa: D102 - the runtime's hook, unused here
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: D102
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(range(self.num_nodes))

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run the ClientApp on every message, as the SuperNode of its destination would."""
        replies = []
        for msg in messages:
            self.sent += 1
            md = msg.metadata  # the SuperLink gives every message an id; replies point back to it
            msg = Message(msg.content, metadata=Metadata(
                run_id=md.run_id, message_id=f"m{self.sent}", src_node_id=md.src_node_id, dst_node_id=md.dst_node_id,
                reply_to_message_id="", group_id=md.group_id, created_at=md.created_at, ttl=md.ttl, message_type=md.message_type))
            node = md.dst_node_id
            context = Context(run_id=1, node_id=node, node_config={"partition-id": node, "num-partitions": self.num_nodes},
                              state=self.states[node], run_config={})
            replies.append(self.client(msg, context))
        return replies


def run_locally(overrides: str, run_dir: Path, num_nodes: int, client=client_app, monkeypatch=None) -> dict:
    """Run the ServerApp against `num_nodes` in-process clients; return metrics.json."""
    overrides = f"{overrides} run_dir={run_dir}"
    monkeypatch.setenv("FEDMEMES_OVERRIDES", overrides)
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": overrides})
    server_app(LocalGrid(num_nodes, client), context)
    return json.loads((run_dir / "metrics.json").read_text())


def _model(run_dir: Path, name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(run_dir / f"{name}.safetensors")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data/feature cache for all runs here, and one torch thread (several spin on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path_factory.mktemp("cache")
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_runs_two_rounds(name, tmp_path, cache, monkeypatch):
    extra = EXTRA.get(name, "num_clients=2")
    metrics = run_locally(f"{SMALL} strategy={name} cache_dir={cache} {extra}", tmp_path, int(extra.split("=")[1]), monkeypatch=monkeypatch)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    for row in metrics["rounds"][1:]:
        assert row["dropped_replies"] == 0 and row["kept_previous_model"] == 0
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    first, final = metrics["rounds"][0], _model(tmp_path, "final")
    assert all(np.isfinite(v).all() for v in final.values())
    assert metrics["rounds"][-1]["loss"] != first["loss"]  # the global model moved


def nan_client(bad_partition: int) -> Callable[[Message, Context], Message]:
    """A ClientApp that answers with NaN weights when it is `bad_partition`."""

    def call(msg: Message, context: Context) -> Message:
        out = client_app(msg, context)
        if int(context.node_config["partition-id"]) == bad_partition and msg.metadata.message_type == "train":
            arrays = out.content["arrays"]
            for key in list(arrays.keys()):
                arrays[key] = type(arrays[key])(np.full_like(arrays[key].numpy(), math.nan))
        return out

    return call


@pytest.mark.slow
def test_a_client_sending_nan_is_dropped_every_round(tmp_path, cache, monkeypatch):
    metrics = run_locally(f"{SMALL} num_clients=3 cache_dir={cache}", tmp_path, 3, client=nan_client(1), monkeypatch=monkeypatch)
    assert [(r["replies"], r["dropped_replies"], r["kept_previous_model"]) for r in metrics["rounds"][1:]] == [(3, 1, 0)] * 2
    assert all(np.isfinite(v).all() for v in _model(tmp_path, "final").values())
    assert math.isfinite(metrics["test"]["auroc"])


@pytest.mark.slow
def test_too_few_sound_replies_keep_the_global_model(tmp_path, cache, monkeypatch):
    metrics = run_locally(f"{SMALL} num_clients=2 server.strategy.min_valid_replies=2 cache_dir={cache}", tmp_path, 2,
                          client=nan_client(1), monkeypatch=monkeypatch)
    assert [r["kept_previous_model"] for r in metrics["rounds"][1:]] == [1, 1]
    assert {r["loss"] for r in metrics["rounds"]} == {metrics["rounds"][0]["loss"]}  # never moved
