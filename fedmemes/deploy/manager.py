"""`fedmemes manager`: a FastAPI service beside each client that starts/stops its SuperNode and sends heartbeats."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import ssl
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI

from fedmemes.deploy import processes, supernode
from fedmemes.deploy.auth import TOKEN_HEADER, BodyLimit, read_token, require_token
from fedmemes.deploy.exposure import refuse_plain_text

log = logging.getLogger(__name__)


class Manager:
    """One client machine: its SuperNode process, what it holds, what the server last told it."""

    def __init__(self, name: str, client_args: argparse.Namespace, flwr_home: Path) -> None:
        self.name = name
        self.client_args = client_args
        self.flwr_home = flwr_home
        self.proc: subprocess.Popen[bytes] | None = None
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
        """Summarise this client's data: its partition, or the size of its own folder (an unreadable one says why)."""
        a = self.client_args
        summary: dict[str, Any] = {"partition_id": a.partition_id, "num_partitions": a.num_partitions}
        if a.data_dir is not None:
            train, img = Path(a.data_dir) / "train.jsonl", Path(a.data_dir) / "img"
            summary["data_dir"] = str(a.data_dir)
            try:
                summary["train_rows"] = 0
                if train.is_file():
                    with train.open("rb") as rows:  # bytes: a line in any encoding counts
                        summary["train_rows"] = sum(1 for _ in rows)
                summary["images"] = sum(1 for _ in img.iterdir()) if img.is_dir() else 0
            except OSError as err:
                summary["error"] = f"{type(err).__name__}: {err}"
        return summary

    def info(self) -> dict[str, Any]:
        """Return what GET /info shows (and each heartbeat carries); never raises, a failing part is reported."""
        if self.device is None:
            try:
                from fedmemes.federation import engine

                self.device = engine.pick_device("auto").type
            except Exception as err:  # noqa: BLE001 - a broken driver must not take the manager down
                log.warning("device detection failed: %r", err)
                self.device = "unknown"
        try:
            data = self.data()
        except Exception as err:  # noqa: BLE001 - /info answers 200 with the reason instead of 500
            data = {"error": f"{type(err).__name__}: {err}"}
        return {
            "name": self.name,
            "device": self.device,
            "data": data,
            "supernode_running": self.running(),
            "superlink": self.client_args.superlink,
            "tls": self.client_args.root_certificates is not None,
            "last_round_seen": self.last_round_seen,
        }


def heartbeat_once(
    manager: Manager, status_url: str, token: str, timeout_s: float = 5.0, ca: Path | None = None
) -> dict[str, Any]:
    """POST one heartbeat to the server's status API (https verified against `ca`) and return its JSON object reply."""
    body = json.dumps({"name": manager.name, "info": manager.info()}).encode()
    req = urllib.request.Request(
        f"{status_url.rstrip('/')}/heartbeat",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", TOKEN_HEADER: token},
    )
    context = ssl.create_default_context(cafile=str(ca) if ca else None) if status_url.startswith("https") else None
    with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:  # noqa: S310 - the configured server URL
        reply = json.loads(resp.read(64 * 1024))
    if not isinstance(reply, dict):
        raise TypeError(f"status API replied {type(reply).__name__}, not a JSON object")
    return reply


def heartbeat_loop(
    manager: Manager, status_url: str, token: str, period_s: float, stop: threading.Event, ca: Path | None = None
) -> None:
    """Send heartbeats every `period_s` until `stop` is set; any failure is logged and the next beat tried."""
    while not stop.is_set():
        try:
            reply = heartbeat_once(manager, status_url, token, ca=ca)
            if manager.running() and reply.get("current_round") is not None:
                manager.last_round_seen = int(reply["current_round"])
        except Exception as err:  # noqa: BLE001 - a bad reply or a bug must not end heartbeats for good
            log.warning("heartbeat to %s failed: %s: %s", status_url, type(err).__name__, err)
        stop.wait(period_s)


def create_app(manager: Manager, token: str) -> FastAPI:
    """Return the manager's API: GET /health is open (liveness probes); /info, /start, /stop need the token."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        manager.stop()  # here, not after uvicorn.run: uvicorn re-raises SIGTERM once it has shut down

    api = FastAPI(title=f"fedmemes manager {manager.name}", lifespan=lifespan)
    api.add_middleware(BodyLimit)
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

    p = argparse.ArgumentParser(
        prog="fedmemes manager",
        parents=[supernode.parser()],
        conflict_handler="resolve",
        description="Client manager: start/stop this machine's SuperNode over HTTP, heartbeat to the server.",
    )
    p.add_argument("--name", default=os.uname().nodename, help="this client's name in the server's status API")
    p.add_argument("--host", default="127.0.0.1", help="where the manager API listens (0.0.0.0 for other machines)")
    p.add_argument("--port", type=int, default=8091)
    p.add_argument(
        "--status-url",
        help="the server's status API, e.g. https://server:8090 (verified with "
        "--root-certificates); no heartbeats when absent",
    )
    p.add_argument(
        "--heartbeat-s", type=float, default=10.0, help="seconds between heartbeats (match server.heartbeat_s)"
    )
    p.add_argument("--token-file", help=f"file holding the API token (else ${'FEDMEMES_TOKEN'})")
    p.add_argument(
        "--autostart", action="store_true", help="start the SuperNode at once instead of waiting for POST /start"
    )
    p.add_argument("--ssl-certfile", type=Path, help="certificate for serving this API over TLS (with --ssl-keyfile)")
    p.add_argument("--ssl-keyfile", type=Path, help="its private key")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow plain HTTP on a non-loopback --host and an http:// --status-url on another machine",
    )
    args = p.parse_args(argv)
    supernode.check_policy(p, args.policy, args.check)  # a bad policy stops the manager now, not its SuperNode later
    try:
        token = read_token(args.token_file)
        supernode.node_config(args.partition_id, args.num_partitions, args.data_dir)  # fail now, not on /start
        supernode.check_address(args.superlink)
        supernode.check_paths(args)
        if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
            raise ValueError("give both --ssl-certfile and --ssl-keyfile, or neither")
        refuse_plain_text(
            "--host",
            args.host,
            bool(args.ssl_certfile),
            args.insecure,
            "serve TLS with --ssl-certfile/--ssl-keyfile, or pass --insecure to accept plain HTTP",
        )
        if args.status_url:
            url = urllib.parse.urlsplit(args.status_url)
            refuse_plain_text(
                "--status-url",
                url.hostname or "",
                url.scheme == "https",
                args.insecure,
                "the token travels in every heartbeat: use https:// (the server's status API serves TLS "
                "with server.certs), or pass --insecure",
            )
    except ValueError as err:
        p.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    home = args.flwr_home or Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")) / f"manager-{args.name}"
    manager = Manager(args.name, args, home)
    manager.info()  # detect the device now, before the API answers
    stop = threading.Event()
    if args.status_url:
        threading.Thread(
            target=heartbeat_loop,
            args=(manager, args.status_url, token, args.heartbeat_s, stop, args.root_certificates),
            daemon=True,
        ).start()
    if args.autostart:
        manager.start()
    try:
        uvicorn.run(
            create_app(manager, token),
            host=args.host,
            port=args.port,
            log_level="warning",
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        stop.set()
        manager.stop()
