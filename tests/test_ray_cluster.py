"""Past one machine: `fedmemes simulate` attaches to a Ray cluster that was started before it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_head(temp: str) -> tuple[subprocess.Popen, str] | None:
    """`ray start --head --block` on random ports in its own process group; None if it did not come up."""
    port = _free_port()
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--temp-dir={temp}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--node-manager-port={_free_port()}",
        f"--object-manager-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--ray-client-server-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
    ]
    head = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    up = threading.Event()

    def watch() -> None:
        for line in head.stdout:  # `ray start` prints this once the node has registered with its GCS
            if "Ray runtime started" in line:
                up.set()

    threading.Thread(target=watch, daemon=True).start()
    if up.wait(timeout=240) and head.poll() is None:
        time.sleep(5)  # --block exits when a process of the node dies: give a failing one time to show it
        if head.poll() is None:
            return head, f"127.0.0.1:{port}"
    _stop(head)
    return None


def _stop(head: subprocess.Popen) -> None:
    # Stop only this cluster (its process group), never `ray stop`: other Ray sessions may share the machine.
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


@pytest.fixture
def ray_head():
    """A private one-node cluster in its own temp dir; on a saturated machine Ray's 30 s start window can run out:
    retry."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 107 characters
    for _ in range(3):
        started = _start_head(temp)
        if started:
            break
    else:
        pytest.fail("ray start --head did not come up in 3 tries")
    head, address = started
    try:
        yield address, Path(temp)
    finally:
        _stop(head)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_simulation_runs_on_an_existing_ray_cluster(ray_head, tmp_path):
    address, temp = ray_head
    run_dir = tmp_path / "run"
    env = dict(os.environ)  # FEDMEMES_CACHE: the session cache (conftest)
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [
            str(BIN / "fedmemes"),
            "simulate",
            "debug=tiny",
            "num_rounds=2",
            "num_clients=2",
            f"simulation.ray_address={address}",
            f"hydra.run.dir={run_dir}",
        ],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert all(r["clients"] == 2 for r in metrics["rounds"][1:]) and sorted(metrics["rounds"][2]["partitions"]) == [
        0,
        1,
    ]
    # the clients trained it
    assert metrics["test"]["n"] > 0 and metrics["rounds"][2]["loss"] != metrics["rounds"][0]["loss"]
    assert f"attached to the Ray cluster at {address}" in (run_dir / "fedmemes.log").read_text()
    # The client actors ran as workers of that cluster: their logs are in its temp dir.
    assert len(list((temp / "session_latest" / "logs").glob("*worker-*"))) >= 2, (
        "the client actors did not run on the cluster"
    )


def test_cluster_address_comes_from_the_config_then_ray_address(monkeypatch):
    from fedmemes.config import load_config
    from fedmemes.federation.cluster import FORWARDED_ENV, ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(load_config("").simulation.ray_address) is None  # default: a private one-machine Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) == "10.0.0.5:6379"
    assert ray_address(load_config("simulation.ray_address=10.0.0.9:6379").simulation.ray_address) == "10.0.0.9:6379"
    assert "FEDMEMES_OVERRIDES" in FORWARDED_ENV  # the clients on the cluster must see the run's overrides
