"""Checkpoints: strategy state, history and the round offset of a resumed server, on hand-built values."""

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg
from run_helpers import bare_server_run

from fedmemes.bookkeeping import checkpoint
from fedmemes.federation.server_run import ServerRun


def test_fedadam_moments_survive_a_restart(tmp_path):
    before = FedAdam()
    before.m_t = {"w": np.array([0.1, -0.2], np.float32)}
    before.v_t = {"w": np.array([0.01, 0.04], np.float32)}
    state = {"w": torch.tensor([1.0, 2.0])}
    checkpoint.save(
        tmp_path,
        checkpoint.Checkpoint(
            3, state, {"rounds": [], "clients": {}, "best_round": None}, state, checkpoint.strategy_state(before)
        ),
    )
    after = FedAdam()
    ckpt = checkpoint.load(tmp_path)
    checkpoint.restore_strategy(after, ckpt.strategy)
    assert ckpt.server_round == 3 and torch.equal(ckpt.arrays["w"], state["w"])
    np.testing.assert_array_equal(after.m_t["w"], before.m_t["w"])
    np.testing.assert_array_equal(after.v_t["w"], before.v_t["w"])
    assert checkpoint.strategy_state(FedAvg()) == {}  # stateless strategies save nothing


def test_load_without_checkpoint_names_the_fix(tmp_path):
    try:
        checkpoint.load(tmp_path)
    except FileNotFoundError as err:
        assert "checkpoint.pt" in str(err) and "resume=RUN_DIR" in str(err)
    else:
        raise AssertionError("expected FileNotFoundError")


def _server_run(tmp_path, monkeypatch) -> ServerRun:
    return bare_server_run(tmp_path, monkeypatch, num_rounds=4)


def test_resumed_server_scores_each_round_once(tmp_path, monkeypatch):
    first = _server_run(tmp_path, monkeypatch)
    for r, value in ((0, 0.1), (1, 0.3), (2, 0.2)):
        first.evaluate(r, ArrayRecord({"w": torch.full((2,), value)}))
    # The server dies here; a new one resumes from the checkpoint written after round 2.
    second = _server_run(tmp_path, monkeypatch)
    weights = second.resume(checkpoint.load(tmp_path))
    assert second.offset == 2 and torch.allclose(weights["w"], torch.full((2,), 0.2))
    assert second.run_key == first.run_key  # the clients find their state files again
    assert second.evaluate(0, ArrayRecord(weights)) is None  # Flower's round 0 of the resumed run = round 2
    second.evaluate(1, ArrayRecord({"w": torch.full((2,), 0.5)}))
    second.evaluate(2, ArrayRecord({"w": torch.full((2,), 0.4)}))
    rounds = [r["round"] for r in second.history.as_dict()["rounds"]]
    assert rounds == [0, 1, 2, 3, 4]
    assert second.history.best_round == 3
    assert checkpoint.load(tmp_path).server_round == 4
