"""The live dashboard: a static page on the status API (`/`) that polls `/status`; and the status API for simulations."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse

log = logging.getLogger(__name__)
FILES = resources.files(__name__)


def _summary(run_dir: Path) -> dict[str, Any]:
    """Return the run's headline choices from config.yaml: names only, no paths or hosts."""
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}

    def name(key: str) -> str | None:
        target = (cfg.get(key) or {}).get("_target_") if key != "strategy" else ((cfg.get("server") or {}).get("strategy") or {}).get("_target_")
        return target.rsplit(".", 1)[-1] if isinstance(target, str) else None

    return {"num_rounds": cfg.get("num_rounds"), "num_clients": cfg.get("num_clients"),
            "model": name("model"), "strategy": name("strategy"), "partition": name("partition")}


def mount(api: FastAPI, run_dir: Path) -> None:
    """Serve the page at `/`, its script at `/dashboard.js`, and the run's headline choices at `/dashboard/run`."""

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(FILES.joinpath("index.html").read_text())

    @api.get("/dashboard.js", include_in_schema=False)
    def script() -> FileResponse:
        with resources.as_file(FILES.joinpath("dashboard.js")) as path:
            return FileResponse(path, media_type="text/javascript")

    @api.get("/dashboard/run")
    def run_summary() -> dict[str, Any]:
        return _summary(run_dir)


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
            raise SystemExit(f"error: server.status_port={port}: {host}:{port} is in use; pick a free port, "
                             "e.g. server.status_port=8091")
        import secrets
        import warnings

        from fedmemes.deploy.auth import read_token
        from fedmemes.deploy.status_api import RunStatus, create_app, serve_in_thread

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
