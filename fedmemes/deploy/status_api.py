"""The server's status API: registered clients and their heartbeats, run state, current round, hold-out scores."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, ValidationError

from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.deploy.auth import BodyLimit, has_token, require_token
from fedmemes.deploy.certs import TlsFiles
from fedmemes.deploy.dashboard import mount as mount_dashboard

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
            rounds: list[dict[str, Any]] = json.loads((self.run_dir / METRICS_FILE).read_text())["rounds"]
            return rounds
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return []

    def snapshot(self, full: bool = True) -> dict[str, Any]:
        """Return the status as JSON-ready data; without `full`, no paths, names or client details (the open view)."""
        now = time.time()
        with self.lock:
            clients = [
                {
                    **c,
                    "seconds_since_heartbeat": round(now - c["last_heartbeat"], 1),
                    "online": now - c["last_heartbeat"] < ONLINE_PERIODS * self.heartbeat_s,
                }
                for c in self.clients.values()
            ]
        rounds = self.rounds()
        if not full:  # client names are often host names; info carries data_dir and superlink addresses
            clients = [{k: c[k] for k in ("online", "seconds_since_heartbeat")} for c in clients]
            # Scores only: a nested or text field (e.g. per-node reasons) could name a client.
            rounds = [{k: v for k, v in r.items() if v is None or isinstance(v, (int, float))} for r in rounds]
        return {
            "state": self.state,
            "run_id": self.run_id,
            **({"run_dir": str(self.run_dir)} if full else {}),
            "current_round": rounds[-1]["round"] if rounds else None,
            "rounds": rounds,
            "clients": clients,
        }


def create_app(status: RunStatus, token: str) -> FastAPI:
    """Return the FastAPI app: GET /health and /status are open (a dashboard polls them; /status names clients and
    paths only with the token), POST /heartbeat needs the token; no body over 64 KiB is read."""
    api = FastAPI(title="fedmemes server status")
    api.add_middleware(BodyLimit)
    mount_dashboard(api, status.run_dir)  # the live page at `/` (fedmemes/deploy/dashboard/)

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/status")
    def get_status(request: Request) -> dict[str, Any]:
        return status.snapshot(full=has_token(request.headers, token))

    @api.post("/heartbeat", dependencies=[Depends(require_token(token))])
    async def heartbeat(request: Request) -> dict[str, Any]:
        try:  # parsed here, after the token check (a body parameter would be parsed before it)
            beat = Heartbeat.model_validate_json(await request.body())
        except ValidationError as err:
            raise HTTPException(
                status_code=422, detail=[{"loc": e["loc"], "msg": e["msg"]} for e in err.errors()]
            ) from None
        status.beat(beat)
        rounds = status.rounds()
        return {"ok": True, "state": status.state, "current_round": rounds[-1]["round"] if rounds else None}

    return api


def serve_in_thread(api: FastAPI, host: str, port: int, tls: TlsFiles | None = None) -> uvicorn.Server:
    """Serve `api` from a daemon thread, over TLS with the SuperLink's certificate when given; stop with
    `should_exit`."""
    server = uvicorn.Server(
        uvicorn.Config(
            api,
            host=host,
            port=port,
            log_level="warning",
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
        )
    )
    threading.Thread(target=server.run, daemon=True).start()
    return server
