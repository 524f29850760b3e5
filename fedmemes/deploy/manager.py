"""`fedmemes manager`: a FastAPI service beside each client that starts/stops its SuperNode and sends heartbeats."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import threading
import urllib.request
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI

from fedmemes.deploy import processes, supernode
from fedmemes.deploy.auth import TOKEN_HEADER, read_token, require_token

log = logging.getLogger("fedmemes.manager")


class Manager:
    """One client machine: its SuperNode process, what it holds, what the server last told it."""

    def __init__(self, name: str, client_args: argparse.Namespace, flwr_home: Path) -> None:
        self.name = name
        self.client_args = client_args
        self.flwr_home = flwr_home
        self.proc: subprocess.Popen | None = None
        self.last_round_seen: int | None = None  # the server's latest scored round while our SuperNode ran
        self.device: str | None = None  # found once: importing torch must not stall a request
        self.lock = threading.Lock()

    def running(self) -> bool:
        """Return whether our SuperNode process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> bool:
        """Start the SuperNode unless it runs; return True if it was started now."""
        with self.lock:
            if self.running():
                return False
            self.flwr_home.mkdir(parents=True, exist_ok=True)
            cmd = supernode.command_from_args(self.client_args)
            self.proc = processes.spawn(cmd, processes.flower_env(self.flwr_home), self.flwr_home / "supernode.log")
            log.info("started SuperNode (pid %d) for %s", self.proc.pid, self.client_args.superlink)
            return True

    def stop(self) -> bool:
        """Stop the SuperNode and the ClientApp it runs; return True if one was running."""
        with self.lock:
            was = self.running()
            processes.stop(self.proc)
            self.proc = None
            return was

    def data(self) -> dict[str, Any]:
        """Summarise this client's data: its partition, or the size of its own folder."""
        a = self.client_args
        summary: dict[str, Any] = {"partition_id": a.partition_id, "num_partitions": a.num_partitions}
        if a.data_dir is not None:
            train = Path(a.data_dir) / "train.jsonl"
            summary.update(data_dir=str(a.data_dir), train_rows=sum(1 for _ in train.open()) if train.is_file() else 0,
                           images=len(list((Path(a.data_dir) / "img").glob("*"))) if (Path(a.data_dir) / "img").is_dir() else 0)
        return summary

    def info(self) -> dict[str, Any]:
        """Return what GET /info shows (and each heartbeat carries)."""
        if self.device is None:
            from fedmemes import engine

            self.device = engine.pick_device("auto").type
        return {"name": self.name, "device": self.device, "data": self.data(),
                "supernode_running": self.running(), "superlink": self.client_args.superlink,
                "tls": self.client_args.root_certificates is not None, "last_round_seen": self.last_round_seen}


def heartbeat_once(manager: Manager, status_url: str, token: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """POST one heartbeat to the server's status API and remember the round it reports."""
    body = json.dumps({"name": manager.name, "info": manager.info()}).encode()
    req = urllib.request.Request(f"{status_url.rstrip('/')}/heartbeat", data=body, method="POST",
                                 headers={"Content-Type": "application/json", TOKEN_HEADER: token})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the configured server URL
        reply = json.loads(resp.read())
    return reply


def heartbeat_loop(manager: Manager, status_url: str, token: str, period_s: float, stop: threading.Event) -> None:
    """Send heartbeats every `period_s` until `stop` is set; an unreachable server is logged, not fatal."""
    while not stop.is_set():
        try:
            reply = heartbeat_once(manager, status_url, token)
            if manager.running() and reply.get("current_round") is not None:
                manager.last_round_seen = int(reply["current_round"])
        except OSError as err:
            log.warning("heartbeat to %s failed: %s", status_url, err)
        stop.wait(period_s)


def create_app(manager: Manager, token: str) -> FastAPI:
    """Return the manager's API: GET /health is open (liveness probes); /info, /start, /stop need the token."""
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        manager.stop()  # here, not after uvicorn.run: uvicorn re-raises SIGTERM once it has shut down

    api = FastAPI(title=f"fedmemes manager {manager.name}", lifespan=lifespan)
    auth = [Depends(require_token(token))]

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/info", dependencies=auth)
    def info() -> dict[str, Any]:
        return manager.info()

    @api.post("/start", dependencies=auth)
    def start() -> dict[str, Any]:
        return {"started": manager.start(), "supernode_running": manager.running()}

    @api.post("/stop", dependencies=auth)
    def stop() -> dict[str, Any]:
        return {"stopped": manager.stop(), "supernode_running": manager.running()}

    return api


def main(argv: list[str] | None = None) -> None:
    """Parse `fedmemes manager ...` (plus the `fedmemes client` flags) and serve until interrupted."""
    import uvicorn

    p = argparse.ArgumentParser(prog="fedmemes manager", parents=[supernode.parser()], conflict_handler="resolve",
                                description="Client manager: start/stop this machine's SuperNode over HTTP, heartbeat to the server.")
    p.add_argument("--name", default=os.uname().nodename, help="this client's name in the server's status API")
    p.add_argument("--host", default="127.0.0.1", help="where the manager API listens (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument("--status-url", help="the server's status API, e.g. http://server:8090 (no heartbeats when absent)")
    p.add_argument("--heartbeat-s", type=float, default=10.0, help="seconds between heartbeats (match server.heartbeat_s)")
    p.add_argument("--token-file", help=f"file holding the API token (else ${'FEDMEMES_TOKEN'})")
    p.add_argument("--autostart", action="store_true", help="start the SuperNode at once instead of waiting for POST /start")
    args = p.parse_args(argv)
    try:
        token = read_token(args.token_file)
        supernode.node_config(args.partition_id, args.num_partitions, args.data_dir)  # fail now, not on /start
    except ValueError as err:
        p.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    home = args.flwr_home or Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")) / f"manager-{args.name}"
    manager = Manager(args.name, args, home)
    manager.info()  # detect the device now, before the API answers
    stop = threading.Event()
    if args.status_url:
        threading.Thread(target=heartbeat_loop, args=(manager, args.status_url, token, args.heartbeat_s, stop), daemon=True).start()
    if args.autostart:
        manager.start()
    try:
        uvicorn.run(create_app(manager, token), host=args.host, port=args.port, log_level="warning")
    finally:
        stop.set()
        manager.stop()
