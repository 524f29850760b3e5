"""The real ServerApp main over an in-process grid (no Ray): a hostile node, the run-dir guard, resume checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fedmemes.bookkeeping.run_dir import RunDirError
from fedmemes.federation import client_app, server_app

HONEST = {101: 0, 202: 1}  # node id -> partition
HOSTILE = 303


class InlineGrid:
    """Enough of a Flower Grid: every train message is answered in-process by the ClientApp (or the hostile node)."""

    def __init__(self, overrides: str) -> None:
        self.overrides, self.calls = overrides, 0

    def get_node_ids(self):
        return [*HONEST, HOSTILE]

    def _context(self, node: int) -> Context:
        return Context(
            run_id=1,
            node_id=node,
            node_config={"partition-id": HONEST.get(node, 0), "num-partitions": 2},
            state=RecordDict(),
            run_config={"overrides": self.overrides},
        )

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        self.calls += bool(messages)  # Flower also sends the (empty) client-side evaluate round
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            reply = client_app.train(msg, self._context(node))
            if node == HOSTILE:  # trains like partition 0, then sends 1e38 everywhere and claims 10^9 memes
                metrics = reply.content["metrics"]
                metrics["num-examples"] = 10**9
                arrays = ArrayRecord(
                    {k: Array(np.full_like(a.numpy(), 1e38)) for k, a in reply.content["arrays"].items()}
                )
                reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
            replies.append(reply)
        return replies


def _main(overrides: str) -> InlineGrid:
    grid = InlineGrid(overrides)
    server_app.main(
        grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": overrides})
    )
    return grid


@pytest.mark.slow
def test_server_survives_a_hostile_node_and_guards_its_run_dir(tmp_path, server_identity):
    run = tmp_path / "run"
    base = f"debug=tiny num_clients=2 run_dir={run}"
    _main(f"{base} num_rounds=1")
    metrics = json.loads((run / "metrics.json").read_text())
    for row in metrics["rounds"][1:]:  # every round went on: the hostile update clipped, its claim capped
        assert (row["replies"], row["dropped_replies"], row["clipped_replies"], row["capped_weights"]) == (3, 0, 1, 1)
        assert math.isfinite(row["loss"]) and row["auroc"] is not None
    # all three claim a partition; the hostile node claims partition 0 too, and each keeps its own entry
    assert sorted((n["node_id"], n["partition_id"]) for n in metrics["nodes"]) == [(101, 0), (202, 1), (HOSTILE, 0)]
    assert next(n for n in metrics["nodes"] if n["node_id"] == 101)["n_train"] < 10**9

    with pytest.raises(RunDirError, match="overwrite=true"):  # a fresh run never overwrites that run
        _main(f"{base} num_rounds=1")
    # resume with another model: refused before training, naming the changed keys (config.yaml is the original)
    with pytest.raises(ValueError, match="late_fusion|LateFusion") as err:
        _main(f"{base} num_rounds=2 resume={run} model=late_fusion")
    assert "model._target_: " in str(err.value) and "resume_allow_changes=[" in str(err.value)
    # even when the changes are allowed, a checkpoint that does not fit the model is refused, naming the tensors
    with pytest.raises(ValueError, match="tensors"):
        _main(f"{base} num_rounds=2 resume={run} model=late_fusion resume_allow_changes=[model]")
    grid = _main(f"{base} num_rounds=2 resume={run}")
    assert grid.calls == 1  # only round 2 was trained (resumed after round 1)
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["clipped_replies"] == 1
