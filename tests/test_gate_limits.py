"""The deployment's gate (the SuperLink's public socket) holds against slow clients like `fedmemes serve` does."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from deploy_helpers import seconds_until_closed

from fedmemes.deploy.processes import free_port, spawn, stop, wait_for_port
from fedmemes.deploy.slow_clients import SlowClientLimits

pytestmark = pytest.mark.slow  # a real SuperLink behind the gate


def test_the_gate_cuts_off_a_slowloris_client_and_keeps_answering(tmp_path: Path) -> None:
    public, control = free_port(), free_port()
    cmd = [sys.executable, "-m", "fedmemes.deploy.gate", "--public", f"127.0.0.1:{public}", "--host", "127.0.0.1"]
    cmd += ["--port", str(control), "--disable-runtime-dependency-installation", "--insecure"]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # Flower starts flower-superexec
    proc = spawn(cmd, {**os.environ, "PATH": path, "FLWR_HOME": str(tmp_path / "flwr")}, tmp_path / "gate.log")
    try:
        wait_for_port("127.0.0.1", public, 90, proc)
        deadline = SlowClientLimits().header_timeout_s  # what the gate runs with (README, Security model)
        request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
        closed = seconds_until_closed(public, request, every_s=0.5, give_up_s=deadline + 10)  # 2 bytes a second
        assert closed is not None and deadline - 0.5 <= closed <= deadline + 3, (closed, deadline)
        assert httpx.get(f"http://127.0.0.1:{public}/health", timeout=5).status_code == 200  # still serving
        with socket.create_connection(("127.0.0.1", public)) as big:  # unfinished headers past h11's limit
            big.settimeout(5)
            big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            assert big.recv(12) == b"HTTP/1.1 400"
    finally:
        stop(proc)
