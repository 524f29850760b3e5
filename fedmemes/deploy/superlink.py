"""Start Flower's SuperLink, submit our app to it with `flwr run`, and follow the run to its end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedmemes.deploy.certs import TlsFiles
from fedmemes.deploy.processes import bin_path, flower_env, spawn, split_address, wait_for_port

log = logging.getLogger(__name__)
CONNECTION = "fedmemes"  # the connection name written to $FLWR_HOME/config.toml

# The FAB only names our installed components: code, data and weights never travel in it.
APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "fedmemes-run"
version = "0.1.0"
dependencies = []

[tool.flwr.app]
publisher = "fedmemes"

[tool.flwr.app.components]
serverapp = "fedmemes.federation.server_app:app"
clientapp = "fedmemes.federation.client_app:app"

[tool.flwr.app.config]
overrides = ""
"""


@dataclass
class SuperLink:
    """Where a SuperLink listens and how to reach it; `flwr_home` holds Flower's config, state and logs.

    `address` is what SuperNodes dial (Fleet API + /health only); with `control_port` the Control and runtime
    APIs answer on 127.0.0.1:control_port alone (see `gate`). Without it, `address` is a SuperLink run elsewhere.
    """

    address: str
    flwr_home: Path
    tls: TlsFiles | None = None
    control_port: int | None = None
    details: str = field(default="", init=False)  # Flower's words on the last status wait() saw: why a run failed

    def env(self) -> dict[str, str]:
        """Return the environment every Flower program of this server runs with."""
        return flower_env(self.flwr_home)

    def start(self, node_auth: bool = False, timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
        """Start Flower's SuperLink app behind our gate in its own process group and wait until both ports answer."""
        if self.control_port is None:
            raise ValueError(
                "SuperLink.start needs control_port (server.control_port): the loopback port for Control/runtime"
            )
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "fedmemes.deploy.gate",
            "--public",
            self.address,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.control_port),
            # State stays in memory: a restarted SuperLink must not replay a crashed run's messages.
            "--disable-runtime-dependency-installation",
        ]
        cmd += (
            [
                "--ssl-ca-certfile",
                str(self.tls.ca),
                "--ssl-certfile",
                str(self.tls.cert),
                "--ssl-keyfile",
                str(self.tls.key),
            ]
            if self.tls
            else ["--insecure"]
        )
        cmd += ["--enable-supernode-auth"] if node_auth else []
        proc = spawn(cmd, self.env(), self.log_file)
        wait_for_port(*split_address(self.dial), timeout_s, proc)
        host, port = split_address(self.address)
        wait_for_port("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port, timeout_s, proc)
        return proc

    @property
    def dial(self) -> str:
        """Return the address this machine's `flwr` CLI and ServerApp use: the loopback control port when we run it."""
        if self.control_port is not None:
            return f"127.0.0.1:{self.control_port}"
        host, port = split_address(self.address)
        return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "") else self.address

    @property
    def log_file(self) -> Path:
        """Return the SuperLink's log (the ServerApp's Flower logs end up here too)."""
        return self.flwr_home / "superlink.log"

    def write_connection(self) -> Path:
        """Point `flwr` (run, ls, supernode register) at this SuperLink via $FLWR_HOME/config.toml and write the app
        folder."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        security = f'root-certificates = "{self.tls.ca}"' if self.tls else "insecure = true"
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{self.dial}"\n{security}\n'
        )
        app = self.flwr_home / "app"
        app.mkdir(exist_ok=True)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        return app

    def flwr(self, *args: str, timeout_s: float = 120.0) -> dict[str, Any]:
        """Run a `flwr` CLI command against this SuperLink with JSON output and return the parsed reply."""
        proc = subprocess.run(
            [bin_path("flwr"), *args, "--format", "json"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=self.flwr_home,
        )
        if "deprecat" in (said := proc.stdout + proc.stderr).lower():  # a Flower upgrade asks for a change: show it
            log.warning("`flwr %s` warns: %s", args[0], " ".join(said.split())[:600])
        start = proc.stdout.find("{")
        try:
            reply = json.loads(proc.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            reply = {}
        if proc.returncode != 0 or not reply.get("success", False):
            raise RuntimeError(
                f"`flwr {' '.join(args)}` failed (exit {proc.returncode}): {proc.stdout[-800:]}{proc.stderr[-800:]}"
            )
        return reply

    def submit(self, overrides: str) -> str:
        """Submit our app with these Hydra overrides (they reach every ServerApp/ClientApp as run_config) and return the
        run id."""
        app = self.write_connection()
        value = json.dumps(overrides)  # a TOML basic string is a JSON string
        return str(self.flwr("run", str(app), CONNECTION, "--run-config", f"overrides={value}")["run-id"])

    def register(self, public_key: Path) -> None:
        """Allow the SuperNode holding this key's private half to join (needs `--enable-supernode-auth`)."""
        self.write_connection()
        self.flwr("supernode", "register", str(public_key), CONNECTION)

    def wait(
        self,
        run_id: str,
        on_tick: Callable[[str], None] | None = None,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
    ) -> str:
        """Poll the run's status until it finishes, calling `on_tick(status)` each time; return e.g.
        'finished:completed'."""
        # In-process Control API client: a `flwr ls` process per poll costs a CPU-second of imports.
        from flwr.cli.flower_config import read_superlink_connection
        from flwr.cli.utils import init_http_client_from_connection
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        self.write_connection()
        os.environ["FLWR_HOME"] = str(self.flwr_home)  # where Flower's CLI code reads the connection from
        client = init_http_client_from_connection(read_superlink_connection(CONNECTION))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                runs = client.ListRuns(ListRunsRequest(run_id=int(run_id))).run_dict
                state = run_from_proto(next(iter(runs.values()))).status if runs else None
                status = (
                    f"{state.status}:{state.sub_status}"
                    if state and state.sub_status
                    else (state.status if state else "unknown")
                )
                if on_tick is not None:
                    on_tick(status)
                if status.startswith("finished"):
                    self.details = state.details if state else ""
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id} still '{status}' after {timeout_s:.0f}s")
                time.sleep(poll_s)
        finally:
            client.close()
