"""Test doubles: the real ServerApp and ClientApp in one process, hand-built grids and replies (tests, benchmarks)."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, Metadata, RecordDict
from flwr.app.message import make_message  # public: Flower's own Grids build stamped messages with it
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedmemes.config import OVERRIDES_ENV

ClientFn = Callable[[Message, Context], Message]
SERVER_IDENTITY = {"run_id": 1, "node_id": 0, "task_id": 1}  # what Flower's runtime sets in a ServerApp process


class LocalGrid(Grid):
    """A Grid whose nodes are ClientApp calls in this process (node i is partition i)."""

    def __init__(self, num_nodes: int, client: ClientFn) -> None:
        self.num_nodes, self.client, self.sent = num_nodes, client, 0
        self.states = {i: RecordDict() for i in range(num_nodes)}

    def set_run(self, run: Run) -> None:
        """Accept the runtime's hook; one in-process run needs nothing from it."""

    @property
    def run(self) -> Run:
        """Refuse: no SuperLink run exists in process."""
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """Build a message the way the real Grid does."""
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Return the in-process nodes 0..num_nodes-1."""
        return list(range(self.num_nodes))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Refuse: only send_and_receive is served in process."""
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Refuse: only send_and_receive is served in process."""
        raise NotImplementedError

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run the ClientApp on every message, as the SuperNode of its destination would."""
        replies = []
        for msg in messages:
            self.sent += 1
            md = msg.metadata  # the SuperLink gives every message an id; replies point back to it
            msg = make_message(
                Metadata(
                    run_id=md.run_id,
                    message_id=f"m{self.sent}",
                    src_node_id=md.src_node_id,
                    dst_node_id=md.dst_node_id,
                    reply_to_message_id="",
                    group_id=md.group_id,
                    created_at=md.created_at,
                    ttl=md.ttl,
                    message_type=md.message_type,
                ),
                copy.deepcopy(msg.content),  # each node gets its own copy, as over the wire (mods edit content)
            )
            node = md.dst_node_id
            node_config: dict[str, bool | float | int | str] = {"partition-id": node, "num-partitions": self.num_nodes}
            context = Context(run_id=1, node_id=node, node_config=node_config, state=self.states[node], run_config={})
            replies.append(self.client(msg, context))
        return replies


def _identity(name: str) -> int | None:
    try:
        return int(getattr(TaskIdentity, name))
    except RuntimeError:  # Flower raises while unset
        return None


@contextmanager
def server_identity() -> Iterator[None]:
    """Give this process the task identity a ServerApp has under Flower's runtime; restore it after."""
    # Flower stamps every outgoing Message with it; outside its runtime nothing sets it.
    saved = {name: _identity(name) for name in SERVER_IDENTITY}
    for name, value in SERVER_IDENTITY.items():
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, old in saved.items():
            setattr(TaskIdentity, name, old)


@contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def run_in_process(overrides: str, run_dir: Path, num_nodes: int, client: ClientFn | None = None) -> dict[str, Any]:
    """Run the real ServerApp against `num_nodes` in-process ClientApps (or `client`); return metrics.json."""
    from fedmemes.federation.client_app import app as client_app
    from fedmemes.federation.server_app import app as server_app

    overrides = f"{overrides} run_dir={run_dir}"
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": overrides})
    # The in-process clients get an empty run_config, as under `run_simulation`: they read the environment.
    with _env(OVERRIDES_ENV, overrides), server_identity():
        server_app(LocalGrid(num_nodes, client or client_app), context)
    result: dict[str, Any] = json.loads((Path(run_dir) / "metrics.json").read_text())
    return result


class StaticGrid:
    """Enough of a Grid for a strategy's configure_*: a fixed set of connected node ids."""

    def __init__(self, *node_ids: int) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        """Return the connected node ids."""
        return list(self.node_ids)


def reply_from(node: int, content: RecordDict | Error, message_type: str = "train") -> Message:
    """Build the reply `node` sends the server, as the SuperLink delivers it (content, or an Error)."""
    metadata = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=message_type,
    )
    if isinstance(content, Error):
        return make_message(metadata, error=content)
    return make_message(metadata, content)
