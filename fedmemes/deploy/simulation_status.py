"""The status API and live dashboard for `fedmemes simulate` (`fedmemes server` starts its own in deploy/server.py)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from fedmemes.deploy.auth import read_token
from fedmemes.deploy.status_api import RunStatus, create_app, serve_in_thread

log = logging.getLogger(__name__)


def port_free(host: str, port: int) -> bool:
    """Return True when `host:port` can be bound now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class SimulationStatus:
    """The status API and dashboard for `fedmemes simulate`: on only when server.status_port is on the command line."""

    def __init__(self, cfg: Any, run_dir: Path, overrides: list[str]) -> None:
        self.cfg, self.status, self.api = cfg, None, None
        # Opt-in: server.status_port has a default (8090) for `fedmemes server`; a plain simulate must not
        # fail or clash because that port is busy, so only an explicit server.status_port=PORT turns it on.
        if cfg.server.status_port is None or not any(o.startswith("server.status_port=") for o in overrides):
            return
        host, port = cfg.server.status_host, int(cfg.server.status_port)
        if not port_free(host, port):
            raise SystemExit(
                f"error: server.status_port={port}: {host}:{port} is in use; pick a free port, "
                "e.g. server.status_port=8091"
            )
        try:  # a simulation has no managers: the token only guards what a token-holder may see
            token = read_token(cfg.server.token_file)
        except ValueError:
            token = secrets.token_urlsafe()
        self.status = RunStatus(run_dir, float(cfg.server.heartbeat_s))
        self.status.state = "running"
        # uvicorn imports its websockets protocol, which warns about deprecated websockets APIs we never use.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(websockets|uvicorn)(\.|$)")
        self.api = serve_in_thread(create_app(self.status, token), host, port)
        log.info("dashboard: http://%s:%s/ (status: /status)", host, port)

    def end(self, completed: bool) -> None:
        """Show the run's final state on the page."""
        if self.status is not None:
            self.status.state = "finished:completed" if completed else "finished:failed"

    def linger(self) -> None:
        """Keep the page up for simulation.status_linger_s seconds after the run, then stop the API."""
        if self.api is None:
            return
        linger = float(self.cfg.simulation.get("status_linger_s") or 0)
        if linger > 0:
            log.info("dashboard stays up %.0f s (simulation.status_linger_s); Ctrl-C ends it", linger)
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(linger)
        self.api.should_exit = True
