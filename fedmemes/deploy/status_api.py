"""The server's status API: registered clients and their heartbeats, run state, current round, hold-out scores."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI
from pydantic import BaseModel

from fedmemes.deploy.auth import require_token
from fedmemes.deploy.dashboard import mount as mount_dashboard
from fedmemes.history import METRICS_FILE

ONLINE_PERIODS = 2.5  # a client is online while its last heartbeat is younger than this many periods


class Heartbeat(BaseModel):
    """What a manager reports every period."""

    name: str
    info: dict[str, Any] = {}


class RunStatus:
    """What the server knows now: set by `fedmemes server`, read by the API (one instance per server)."""

    def __init__(self, run_dir: Path, heartbeat_s: float) -> None:
        self.run_dir = run_dir
        self.heartbeat_s = heartbeat_s
        self.state = "starting"  # starting | waiting for clients | running | finished:completed | finished:failed ...
        self.run_id: str | None = None
        self.clients: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def beat(self, beat: Heartbeat) -> None:
        """Record a manager's heartbeat."""
        with self.lock:
            self.clients[beat.name] = {"name": beat.name, "last_heartbeat": time.time(), "info": beat.info}

    def rounds(self) -> list[dict[str, Any]]:
        """Return the hold-out scores so far (metrics.json, written by the ServerApp after every round)."""
        try:
            return json.loads((self.run_dir / METRICS_FILE).read_text())["rounds"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    def snapshot(self) -> dict[str, Any]:
        """Return the whole status as JSON-ready data."""
        now = time.time()
        with self.lock:
            clients = [
                {**c, "seconds_since_heartbeat": round(now - c["last_heartbeat"], 1),
                 "online": now - c["last_heartbeat"] < ONLINE_PERIODS * self.heartbeat_s}
                for c in self.clients.values()
            ]
        rounds = self.rounds()
        return {"state": self.state, "run_id": self.run_id, "run_dir": str(self.run_dir),
                "current_round": rounds[-1]["round"] if rounds else None, "rounds": rounds, "clients": clients}


def create_app(status: RunStatus, token: str) -> FastAPI:
    """Return the FastAPI app: GET /health and /status are open (a dashboard polls them), POST /heartbeat needs the token."""
    api = FastAPI(title="fedmemes server status")
    mount_dashboard(api, status.run_dir)  # the live page at `/` (fedmemes/deploy/dashboard/)

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/status")
    def get_status() -> dict[str, Any]:
        return status.snapshot()

    @api.post("/heartbeat", dependencies=[Depends(require_token(token))])
    def heartbeat(beat: Heartbeat) -> dict[str, Any]:
        status.beat(beat)
        rounds = status.rounds()
        return {"ok": True, "state": status.state, "current_round": rounds[-1]["round"] if rounds else None}

    return api


def serve_in_thread(api: FastAPI, host: str, port: int) -> uvicorn.Server:
    """Serve `api` from a daemon thread; stop it with `server.should_exit = True`."""
    server = uvicorn.Server(uvicorn.Config(api, host=host, port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    return server
