"""Flower's own SuperLink app with a closed control plane: every route on loopback, only Fleet + health in public.

Flower 1.42 mounts the Fleet, Control and runtime routes on one port and authenticates Control only with an
enterprise OIDC plugin, so anyone who reaches that port can list, start and stop runs or register node keys.
This module runs the same app (`flwr.superlink.main.create_app`, same TLS, same lifespan that starts the
ServerApp's SuperExec) in one uvicorn server listening on two sockets:
- the control socket on 127.0.0.1 (`--host/--port`, Flower's own flags): every route, for `flwr` and the ServerApp;
- the public socket (`--public HOST:PORT`, given to SuperNodes): only the Fleet routes and /health; all else 403.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fedmemes.deploy.exposure import is_loopback
from fedmemes.deploy.processes import split_address
from fedmemes.deploy.slow_clients import SlowClientLimits

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
REFUSAL = {
    "detail": "not served on this address: the SuperLink's Control and runtime APIs answer only on the server's "
    "loopback control port (server.control_port)"
}


def public_paths() -> frozenset[str]:
    """Return the exact paths a SuperNode calls: Flower's Fleet routes and /health."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(getattr(route, "path", "") for route in router.routes) - {""} | {"/health"}


class PublicFilter:
    """ASGI filter around Flower's app: a request that did not arrive on the loopback control socket may call
    only `allowed` paths (exact match, the same `scope["path"]` Flower's router matches on)."""

    def __init__(self, app: ASGIApp, control_port: int, allowed: frozenset[str]) -> None:
        self.app, self.control_port, self.allowed = app, control_port, allowed

    def inside(self, scope: Scope) -> bool:
        """Return whether the connection came in on the control socket (the listening socket's own address)."""
        server = scope.get("server") or ("", None)
        return server[1] == self.control_port and is_loopback(str(server[0]))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "lifespan"
            or self.inside(scope)
            or (scope["type"] == "http" and scope["path"] in self.allowed)
        ):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            body = json.dumps(REFUSAL).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
        else:  # a websocket or an unknown scope type: closed before it is accepted
            await send({"type": "websocket.close", "code": 1008})


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def main(argv: list[str] | None = None) -> None:
    """Parse `--public HOST:PORT` plus `flower-superlink` flags (`--host` must be loopback) and serve both sockets."""
    import importlib

    import uvicorn

    # Flower 1.42 (pinned): the same pieces `flower-superlink` is made of, so its flag checks and lifespan stay
    # Flower's.
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # the package re-exports a function by that name
    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")

    p = argparse.ArgumentParser(prog="python -m fedmemes.deploy.gate", description=__doc__.splitlines()[0])
    p.add_argument("--public", required=True, help="HOST:PORT SuperNodes dial (Fleet API and /health only)")
    args, flower_args = p.parse_known_args(argv)
    sys.argv = ["flower-superlink", *flower_args]
    # The one Flower private call in fedmemes, on purpose: Flower 1.42 (pinned) has no public parser for
    # `flower-superlink`'s flags, and this one gives the gate exactly Flower's flag checks and defaults.
    config = flower._parse_superlink_lifespan_config()
    if not is_loopback(config.host):
        p.error(f"--host {config.host}: the control socket must be loopback (127.0.0.1); SuperNodes use --public")
    public_host, public_port = split_address(args.public)
    app = PublicFilter(create_app(config, flower.SuperLinkLifespan), config.port, public_paths())
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            access_log=True,
            log_config=get_uvicorn_log_config(console_handler.level),
            ssl_keyfile=config.ssl_keyfile,
            ssl_certfile=config.ssl_certfile,
            # SuperNodes are few and keep one connection each; slow or idle strangers are cut off.
            **SlowClientLimits(max_connections=1024).uvicorn_kwargs(),
        )
    )
    server.run(sockets=[_listen(config.host, config.port), _listen(public_host, public_port)])


if __name__ == "__main__":
    main()
