"""End to end: `fedmemes simulate` as a person runs it, 3 clients x 6 rounds on tiny synthetic memes (conftest)."""

import json

import pytest
from safetensors.torch import load_file


@pytest.mark.slow
def test_simulation_learns_and_writes_a_readable_run_dir(simulated_run):
    run_dir, stdout = simulated_run.run_dir, simulated_run.stdout
    assert "round 6/6" in stdout and "hold-out AUROC" in stdout and str(run_dir) in stdout
    assert "DEPRECATED" not in stdout  # Flower chatter hidden by default

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4, 5, 6]
    best = max(r["auroc"] for r in rounds[1:])
    assert best > rounds[0]["auroc"] + 0.1  # federated training learned the text-image pairs
    assert metrics["best_round"] in (1, 2, 3, 4, 5, 6)
    assert metrics["test"]["n"] == 80 and metrics["test"]["auroc"] > 0.6
    assert [c["partition_id"] for c in metrics["clients"]] == [0, 1, 2]
    assert all(c["n_train"] == sum(c["label_counts"]) > 0 for c in metrics["clients"])
    for name in ("best", "final"):
        state = load_file(run_dir / f"{name}.safetensors")
        assert "head.0.weight" in state
    assert (run_dir / "config.yaml").exists() and (run_dir / "fedmemes.log").exists()
