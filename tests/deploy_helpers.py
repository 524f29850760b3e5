"""Shared by the deployment tests: free ports, `fedmemes` child processes in their own groups, HTTP polling."""

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fedmemes.deploy.auth import TOKEN_HEADER
from fedmemes.deploy.processes import free_port

FEDMEMES = [sys.executable, "-m", "fedmemes.cli"]


def ports(n: int) -> list[int]:
    """Return `n` free ports on 127.0.0.1; skip the test where none can be bound."""
    try:
        return [free_port() for _ in range(n)]
    except OSError as err:
        pytest.skip(f"cannot bind a port on 127.0.0.1: {err}")


def http(method: str, url: str, token: str | None = None, ca: Path | None = None) -> tuple[int, dict]:
    """Return (status, JSON body); (0, {}) while nothing listens. https URLs are verified against `ca`."""
    req = urllib.request.Request(
        url, method=method, data=b"" if method == "POST" else None, headers={TOKEN_HEADER: token} if token else {}
    )
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(req, timeout=30, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}
    except OSError:  # not listening yet
        return 0, {}


def protobuf_post(url: str, body: bytes, ca: Path) -> tuple[int, str]:
    """POST a protobuf body as Flower's CLI does, verifying TLS with `ca` only; return (status, body text)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=30, context=ssl.create_default_context(cafile=str(ca))) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def until(check, timeout_s: float, what: str, procs=()):
    """Poll `check` each second until it returns something truthy; fail if a process in `procs` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited with {p.returncode} while waiting for {what}"
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    """Start `fedmemes ARGS` in its own process group, output to `log`."""
    return subprocess.Popen(
        [*FEDMEMES, *args], stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def kill(proc: subprocess.Popen, sig: signal.Signals | None = None) -> None:
    """End the process group of `proc`: `sig` alone when given, else SIGTERM then SIGKILL."""
    for s in (sig,) if sig else (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, s)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            continue


def seconds_until_closed(port: int, trickle: bytes, every_s: float, give_up_s: float) -> float | None:
    """Send `trickle` to 127.0.0.1:`port` one byte per `every_s` (a slowloris client); return the seconds until the
    server closed the connection, None if it never did."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(every_s)
        t0 = time.monotonic()
        for byte in trickle:
            if time.monotonic() - t0 > give_up_s:
                return None
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(1024) == b"":
                    return time.monotonic() - t0
            except TimeoutError:
                continue
            except OSError:  # reset: closed too
                return time.monotonic() - t0
    return None


def local_server_args(run_dir: Path, link: int, control: int, flwr_home: Path, *overrides: str) -> list[str]:
    """`fedmemes server` arguments for a run on 127.0.0.1 without the status API: the overrides, then where it lives."""
    return [
        "server",
        *overrides,
        f"run_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
        f"server.address=127.0.0.1:{link}",
        f"server.control_port={control}",
        f"server.flwr_home={flwr_home}",
        "server.status_port=null",
    ]


def failed_superlink(details: str) -> type:
    """Return a stand-in for fedmemes.deploy.superlink.SuperLink whose run fails with Flower's status `details`."""

    class FailedSuperLink:
        def __init__(self, address: str, flwr_home: Path, *_: object) -> None:
            self.address, self.dial, self.log_file, self.details = address, address, flwr_home / "superlink.log", ""

        def start(self, node_auth: bool = False) -> None:
            return None  # processes.stop(None) stops nothing

        def submit(self, overrides: str) -> str:
            return "1"

        def wait(self, run_id: str, on_tick: object = None) -> str:
            self.details = details
            return "finished:failed"

    return FailedSuperLink
