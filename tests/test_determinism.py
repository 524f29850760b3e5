"""Same seed, same numbers: a client's round depends on (random_seed, round, partition) only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from fedmemes.federation import engine
from fedmemes.models.early_fusion import EarlyFusion

# Wall-clock and bookkeeping fields that may differ between two runs of the same experiment.
CLOCK_KEYS = {"seconds"}
# Flower gives every node a random id each run: which nodes were drawn is compared by partition, not by id.
NODE_ID_KEYS = {"sampled", "sampled_eval"}


class _FakeEncoder:
    dim = 8

    def identity(self) -> str:
        return "fake"


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return TensorDataset(
        torch.randn(n, 8, generator=g), image, torch.ones(n, 2), torch.randint(0, 2, (n,), generator=g)
    )


def _trained(seed: int, draws_before: int) -> dict[str, torch.Tensor]:
    """Train a fresh copy of one model with dropout and modality dropout after other draws on the global RNG."""
    torch.manual_seed(123)
    model = EarlyFusion(
        _FakeEncoder(),
        text_hidden_dim=8,
        image_output_dim=8,
        fusion_output_dim=8,
        image_width=8,
        dropout=0.5,
        modality_dropout=0.5,
    )
    torch.rand(draws_before)  # what this process happened to run before: another client, another round
    engine.train(model, _data(64), epochs=2, lr=1e-2, batch_size=16, device=torch.device("cpu"), seed=seed)
    return engine.trainable_state(model)


def test_a_round_depends_on_its_seed_not_on_the_process_history() -> None:
    first, other_history, other_seed = _trained(7, 0), _trained(7, 1000), _trained(8, 0)
    assert all(torch.equal(first[k], other_history[k]) for k in first)
    assert any(not torch.equal(first[k], other_seed[k]) for k in first)  # the seed does matter


def test_training_leaves_the_callers_rng_as_it_was() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model = EarlyFusion(_FakeEncoder(), text_hidden_dim=8, image_output_dim=8, fusion_output_dim=8, image_width=8)
    state = torch.random.get_rng_state()
    engine.train(model, _data(16), epochs=1, lr=1e-2, batch_size=8, device=torch.device("cpu"), seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), expected)


def _metrics(run_dir: Path) -> list[dict]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return [{k: v for k, v in r.items() if k not in CLOCK_KEYS | NODE_ID_KEYS} for r in metrics["rounds"]] + [
        metrics["test"]
    ]


@pytest.mark.slow
def test_two_simulate_runs_with_one_seed_give_the_same_metrics(simulated_run, tmp_path: Path) -> None:
    # The session's run (conftest: 3 clients on 2 actors with dropout and modality dropout) and a second one with
    # the same overrides and cache: which actor serves which client each round is up to Ray, so any draw left to a
    # process's own RNG history would show up here.
    simulated_run.rerun(tmp_path / "b")
    first, second = _metrics(simulated_run.run_dir), _metrics(tmp_path / "b")
    assert len(first) == len(second) == 8  # rounds 0-6 and the test split
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-6, nan_ok=True), (key, a, b)
            else:
                assert b[key] == value, (key, a, b)
    assert first[-2]["loss"] != first[0]["loss"]  # the runs trained
