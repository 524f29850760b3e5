"""What one `fedmemes serve` request may carry and take: body size, total deadline, image checks, generic errors."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import HTTPException
from PIL import Image

from fedmemes.data.images import ALLOWED_FORMATS, ImageError, open_rgb
from fedmemes.deploy.gate import Receive, Scope, Send

log = logging.getLogger("fedmemes.tools.serve")
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one request may carry and how long it may take."""

    max_request_bytes: int = 10 * 1024 * 1024  # whole body: one upload or one batch
    max_image_pixels: int = 25_000_000  # decompression-bomb guard, checked before decoding
    max_text_chars: int = 1000  # meme captions are short; the encoder reads 64 tokens anyway
    max_batch_lines: int = 256
    deadline_s: float = 30.0  # a whole request: reading the body, fetching, scoring; then 504
    url_deadline_s: float = 10.0  # one image URL: DNS, connect, redirects, body


def request_id() -> str:
    """Return a short id that ties an answer's generic error to the server log's details."""
    return uuid.uuid4().hex[:12]


def unreadable(rid: str, what: str, detail: object) -> str:
    """Log the details of a failure and return the generic message the caller gets (no paths, no exception text)."""
    log.warning("request %s: %s: %s", rid, what, detail)
    return f"could not read the {what} (request {rid})"


async def in_thread(work: Callable[[], T]) -> T:
    """Run blocking work (decoding, fetching, the model) off the event loop; a request past its deadline stops waiting
    for it (the thread finishes on its own), so /health and other requests never queue behind it."""
    return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is over the limit of {limit:,} bytes")


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` by Content-Length and while reading (chunked bodies)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _send_json(send, 413, f"request body is over the limit of {self.max_bytes:,} bytes")
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(self.max_bytes)  # an HTTPException: FastAPI answers 413, even mid-form-parse
            return message

        await self.app(scope, limited, send)


class Deadline:
    """ASGI middleware: a request not answered within `seconds` (slow body, slow fetch, slow model) gets 504."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        with anyio.move_on_after(self.seconds) as timer:
            await self.app(scope, receive, tracked)
        if timer.cancelled_caught and not started:  # a response already under way is cut short instead
            log.warning("%s %s: over the %ss deadline", scope.get("method"), scope.get("path"), self.seconds)
            await _send_json(send, 504, f"the request took longer than this service's deadline of {self.seconds:g} s")


def check_image(path: Path, limits: Limits, rid: str) -> None:
    """Refuse formats outside the allow-list and images over the pixel limit; decode fully (as training does)."""
    try:
        with Image.open(path, formats=ALLOWED_FORMATS):  # only these parsers ever see the bytes
            pass
    except Exception as e:  # noqa: BLE001 - any failure to identify is the client's bad bytes
        log.warning("request %s: image not identified: %s", rid, e)
        raise HTTPException(415, f"image: not a {', '.join(ALLOWED_FORMATS)} image") from None
    try:
        open_rgb(path, limits.max_image_pixels)
    except ImageError as e:
        if e.kind == "image_too_large":
            log.warning("request %s: %s", rid, e.detail)
            raise HTTPException(
                413, f"image: over the limit of {limits.max_image_pixels:,} pixels (decompression-bomb guard)"
            ) from None
        raise HTTPException(422, unreadable(rid, "image", e.detail)) from None
