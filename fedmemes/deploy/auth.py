"""The shared API token of managers and the status API: from a file or the environment, never logged."""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import Header, HTTPException

from fedmemes.deploy.gate import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "FEDMEMES_TOKEN"
TOKEN_HEADER = "X-Fedmemes-Token"
MAX_BODY = 64 * 1024  # bytes: a heartbeat is about 1 KiB; nothing bigger is read, let alone parsed


def read_token(token_file: str | Path | None = None) -> str:
    """Return the token from `token_file`, else from $FEDMEMES_TOKEN; fail with the fix when neither has one."""
    if token_file and not Path(token_file).expanduser().is_file():
        raise ValueError(f"token file {token_file}: no such file; it holds one line, the shared token")
    token = Path(token_file).expanduser().read_text().strip() if token_file else os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        where = f"file {token_file} is empty" if token_file else f"${TOKEN_ENV} is not set"
        raise ValueError(
            f"no API token: {where}; e.g. `export {TOKEN_ENV}=$(python -c 'import secrets; "
            "print(secrets.token_urlsafe())')`"
        )
    return token


def require_token(token: str) -> Callable[..., None]:
    """Return a FastAPI dependency that refuses requests whose token header differs (constant-time compare)."""

    def check(x_fedmemes_token: str | None = Header(default=None)) -> None:
        if x_fedmemes_token is None or not hmac.compare_digest(x_fedmemes_token.encode(), token.encode()):
            raise HTTPException(status_code=401, detail=f"missing or wrong {TOKEN_HEADER} header")

    return check


def has_token(headers: Mapping[str, str], token: str) -> bool:
    """Return whether `headers` carry the right token (constant-time compare)."""
    given = headers.get(TOKEN_HEADER)
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


class BodyLimit:
    """ASGI guard: answer 413 to a request body over `limit` bytes before any route reads or parses it."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # chunked bodies have no length: read at most `limit` bytes, then stop
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send)
                return
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = f'{{"detail": "request body over {self.limit} bytes"}}'.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
