"""End to end: `fedmemes simulate` as a person runs it, 2 clients x 5 rounds on tiny synthetic memes."""

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file


@pytest.mark.slow
def test_simulation_learns_and_writes_a_readable_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ)  # FEDMEMES_CACHE: the session cache (conftest)
    out = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "simulate", "debug=tiny", f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "round 5/5" in out.stdout and "hold-out AUROC" in out.stdout and str(run_dir) in out.stdout
    assert "DEPRECATED" not in out.stdout  # Flower chatter hidden by default

    metrics = json.loads((run_dir / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4, 5]
    best = max(r["auroc"] for r in rounds[1:])
    assert best > rounds[0]["auroc"] + 0.1  # federated training learned the text-image pairs
    assert metrics["best_round"] in (1, 2, 3, 4, 5)
    assert metrics["test"]["n"] == 80 and metrics["test"]["auroc"] > 0.6
    assert [c["partition_id"] for c in metrics["clients"]] == [0, 1]
    assert all(c["n_train"] == sum(c["label_counts"]) > 0 for c in metrics["clients"])
    for name in ("best", "final"):
        state = load_file(run_dir / f"{name}.safetensors")
        assert "head.0.weight" in state
    assert (run_dir / "config.yaml").exists() and (run_dir / "fedmemes.log").exists()
