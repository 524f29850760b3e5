"""fedmemes.federation.testing and the conftest fixtures: identity restored, in-process grid routes messages, cache
isolated."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedmemes.federation.testing import LocalGrid, server_identity


def _run_id() -> int | None:
    try:
        return int(TaskIdentity.run_id)
    except RuntimeError:  # unset
        return None


def test_server_identity_is_set_inside_and_restored_after() -> None:
    TaskIdentity.run_id = 77
    with server_identity():
        assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (1, 0, 1)
    assert _run_id() == 77
    TaskIdentity.run_id = None  # type: ignore[assignment] - back to unset, as outside Flower's runtime
    with server_identity():
        pass
    assert _run_id() is None


def test_local_grid_hands_each_message_to_its_partition_with_an_id(server_identity: None) -> None:
    seen: list[tuple[int, str, object]] = []

    def client(msg: Message, context: Context) -> Message:
        config = context.node_config
        seen.append((int(config["partition-id"]), msg.metadata.message_id, config["num-partitions"]))
        return Message(RecordDict({"config": ConfigRecord({"node": context.node_id})}), reply_to=msg)

    grid = LocalGrid(3, client)
    assert list(grid.get_node_ids()) == [0, 1, 2]
    sent = [grid.create_message(RecordDict(), "train", node, "1") for node in (2, 0)]
    replies = list(grid.send_and_receive(sent))
    assert seen == [(2, "m1", 3), (0, "m2", 3)]
    assert [r.content["config"]["node"] for r in replies] == [2, 0]
    assert [r.metadata.reply_to_message_id for r in replies] == ["m1", "m2"]


def test_every_test_gets_the_session_cache(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert os.environ["FEDMEMES_CACHE"] == str(cache_dir)
    assert cache_dir.is_dir() and cache_dir.is_relative_to(tmp_path_factory.getbasetemp())


def test_a_test_may_set_its_own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDMEMES_CACHE", str(tmp_path))
    assert os.environ["FEDMEMES_CACHE"] == str(tmp_path)


def test_small_config_and_tiny_data_agree(small_config, tiny_data) -> None:
    cfg = small_config("num_clients=3")
    assert cfg.num_clients == 3 and cfg.image_size == 32 and cfg.dataset.source.n_train == 240
    assert {k: len(v) for k, v in tiny_data.splits.items()} == {"train": 240, "dev_seen": 60, "test_seen": 60}
    assert (tiny_data.folder / "train.jsonl").is_file() and str(tiny_data.folder).startswith(cfg.cache_dir)
