"""Run-directory guards: a fresh run never overwrites results, a resume must fit its checkpoint, checkpoints never
unpickle objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fedmemes.bookkeeping import checkpoint
from fedmemes.bookkeeping.history import RunHistory
from fedmemes.bookkeeping.run_dir import RunDirError, check_fresh, prepare

CFG = OmegaConf.create(
    {
        "resume": None,
        "overwrite": False,
        "model": {"_target_": "fedmemes.models.EarlyFusion"},
        "server": {"strategy": {"_target_": "flwr.serverapp.strategy.FedAvg"}},
    }
)


def _ckpt(tmp_path: Path, cfg=CFG, shape=(2,)) -> None:
    state = {"w": torch.zeros(shape)}
    checkpoint.save(
        tmp_path,
        checkpoint.Checkpoint(
            1, state, {"rounds": [], "clients": {}, "best_round": None}, state, {}, checkpoint.setup_of(cfg)
        ),
    )


@pytest.mark.parametrize("name", ["metrics.json", "checkpoint.pt"])
def test_fresh_run_refuses_earlier_results_and_names_the_ways_out(tmp_path, name):
    (tmp_path / name).write_text("{}")
    with pytest.raises(RunDirError) as err:
        check_fresh(tmp_path)
    assert name in str(err.value) and f"resume={tmp_path}" in str(err.value) and "overwrite=true" in str(err.value)
    with pytest.raises(SystemExit, match="overwrite=true"):
        prepare(tmp_path, CFG)
    assert (tmp_path / name).read_text() == "{}"  # nothing was touched


def test_fresh_run_in_a_new_or_log_only_directory_passes(tmp_path):
    (tmp_path / "fedmemes.log").write_text("old log")
    (tmp_path / "clients.json").write_text("{}")
    check_fresh(tmp_path)
    check_fresh(tmp_path / "not-yet")


def test_overwrite_true_clears_the_earlier_results(tmp_path):
    for name in ("metrics.json", "checkpoint.pt", "best.safetensors", "final.safetensors"):
        (tmp_path / name).write_text("old")
    prepare(tmp_path, OmegaConf.merge(CFG, {"overwrite": True}))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_passes_when_the_checkpoint_fits(tmp_path):
    _ckpt(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    prepare(tmp_path, OmegaConf.merge(CFG, {"resume": str(tmp_path)}))


def test_resume_names_what_differs(tmp_path):
    _ckpt(tmp_path)
    other = OmegaConf.merge(
        CFG,
        {
            "resume": str(tmp_path),
            "model": {"_target_": "fedmemes.models.LateFusion"},
            "server": {"strategy": {"_target_": "flwr.serverapp.strategy.FedAdam"}},
        },
    )
    with pytest.raises(SystemExit) as err:
        prepare(tmp_path, other)
    assert "EarlyFusion" in str(err.value) and "LateFusion" in str(err.value) and "FedAdam" in str(err.value)
    ckpt = checkpoint.load(tmp_path)
    found = checkpoint.differences(ckpt, checkpoint.setup_of(CFG), {"w": torch.zeros(3), "v": torch.zeros(1)})
    assert found == [
        "tensors the model has but the checkpoint lacks: ['v']",
        "tensor shapes differ (checkpoint -> model): ['w [2] -> [3]']",
    ]


def test_resume_without_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint.pt not found"):
        prepare(tmp_path, OmegaConf.merge(CFG, {"resume": str(tmp_path)}))


class _Pwn:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_checkpoint_never_unpickles_objects(tmp_path):
    torch.save(
        {"server_round": 1, "arrays": {}, "history": {}, "best_state": {}, "strategy": {"x": _Pwn(tmp_path / "pwned")}},
        tmp_path / "checkpoint.pt",
    )
    with pytest.raises(ValueError, match="cannot be read safely"):
        checkpoint.load(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_strategy_state_with_numpy_and_nested_values_round_trips(tmp_path):
    state = {"m_t": {"w": np.arange(3, dtype=np.float32)}, "steps": 4, "lr": np.float64(0.5), "names": ["a", "b"]}
    _ckpt(tmp_path)
    ckpt = checkpoint.load(tmp_path)
    ckpt.strategy = state
    checkpoint.save(tmp_path, ckpt)
    back = checkpoint.load(tmp_path).strategy
    np.testing.assert_array_equal(back["m_t"]["w"], state["m_t"]["w"])
    assert (
        back["m_t"]["w"].dtype == np.float32
        and back["steps"] == 4
        and back["lr"] == 0.5
        and back["names"] == ["a", "b"]
    )
    with pytest.raises(TypeError, match="strategy.bad"):
        ckpt.strategy = {"bad": object()}
        checkpoint.save(tmp_path, ckpt)


def test_node_facts_cannot_overwrite_another_node(tmp_path):
    history = RunHistory(tmp_path)
    history.clients[0] = {"partition_id": 0, "n_train": 10}  # the operator's split facts
    history.add_node(11, {"partition_id": 0, "n_train": 10})
    history.add_node(22, {"partition_id": 0, "n_train": 10**9})  # claims to be partition 0 too
    out = history.as_dict()
    assert out["clients"] == [{"partition_id": 0, "n_train": 10}]
    assert [(n["node_id"], n["n_train"]) for n in out["nodes"]] == [(11, 10), (22, 10**9)]
    history.save_model("final", {"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final.safetensors"]  # no temporary file left
