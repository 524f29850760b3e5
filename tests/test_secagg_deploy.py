"""server.secagg=true end to end: `fedmemes simulate` (Flower's Ray engine) and a deployment on 127.0.0.1 (SuperLink +
3 SuperNodes, each a separate ClientApp process per message) both finish secure rounds of 3 clients."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_helpers import kill, local_server_args, ports, spawn

from fedmemes.deploy.processes import wait_for_port

pytestmark = pytest.mark.slow

SECAGG = [
    "experiment=strategy_smoke",
    "num_clients=3",
    "server.secagg=true",
    "server.secagg_params.num_shares=3",
    "server.secagg_params.reconstruction_threshold=2",
]


def _secure_rounds(run_dir: Path, rounds: int) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = [r for r in metrics["rounds"] if r["round"] > 0]
    assert [r["round"] for r in rows] == list(range(1, rounds + 1))
    for row in rows:  # every round: one secure aggregate of all 3 clients, nothing dropped, the model moved on
        assert (row["secagg_aggregated"], row["secagg_dropped"], row["clients"]) == (3, [], 3)
        assert (row["replies"], row["kept_previous_model"]) == (1, 0)
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0


def test_simulate_with_secure_aggregation(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    env = {**os.environ, "FEDMEMES_CACHE": str(cache_dir)}
    out = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "simulate", *SECAGG, "num_rounds=2", f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _secure_rounds(run_dir, 2)


def test_deployment_with_secure_aggregation(tmp_path):
    link, control = ports(2)
    env, run_dir = dict(os.environ), tmp_path / "run"
    server = spawn(
        local_server_args(run_dir, link, control, tmp_path / "flwr", *SECAGG, "num_rounds=1"),
        tmp_path / "server.log",
        env,
    )
    procs = [server]
    try:
        wait_for_port("127.0.0.1", link, 120, server)
        for i in range(3):
            procs.append(
                spawn(
                    ["client", "--superlink", f"127.0.0.1:{link}", "--partition-id", str(i), "--num-partitions", "3"]
                    + ["--flwr-home", str(tmp_path / f"n{i}-{time.monotonic_ns()}")],
                    tmp_path / f"client{i}.log",
                    env,
                )
            )
        code = server.wait(timeout=420)
        assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
    finally:
        for proc in procs:
            kill(proc)
    _secure_rounds(run_dir, 1)
