"""Start Flower's command-line programs as child processes and stop them with everything they spawned."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, cast

SECRET_ENV = ("FEDMEMES_TOKEN",)  # auth.TOKEN_ENV: Flower's processes (and the apps they run) never need it


def bin_path(program: str) -> str:
    """Return the path of a console script installed beside this Python (works without an activated venv)."""
    here = Path(sys.executable).parent / program
    return str(here) if here.exists() else program


def flower_env(flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment for Flower's programs: a private FLWR_HOME, no telemetry, no `uv sync` at run time, no
    token."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # our package is installed; never pip/uv at run time
        PATH=str(Path(sys.executable).parent)
        + os.pathsep
        + env.get("PATH", ""),  # SuperLink/SuperNode spawn flwr-* by name
    )
    env.update(extra or {})
    return env


def spawn(cmd: list[str], env: dict[str, str], log: Path | IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """Start `cmd` in its own process group (so `stop` also ends the ServerApp/ClientApp it spawns)."""
    out = open(log, "ab") if isinstance(log, Path) else log  # noqa: SIM115 - the child owns it
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """Terminate a process group started by `spawn`: SIGTERM, then SIGKILL after `grace_s`."""
    if proc is None or proc.poll() is not None:
        _kill_group(proc, signal.SIGKILL)  # its children may outlive it
        return
    _kill_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace_s)
    _kill_group(proc, signal.SIGKILL)
    proc.wait()


def _kill_group(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is None:
        return
    # already gone, or its pid now belongs to another user
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until something listens on host:port; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            # spawn() passes a list of str
            raise RuntimeError(
                f"{cast(list[str], proc.args)[0]} exited with code {proc.returncode} before listening on {host}:{port}"
            )
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s:.0f}s")


def split_address(address: str) -> tuple[str, int]:
    """Split 'host:port' (IPv6 in brackets allowed) into (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)
