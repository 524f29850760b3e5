"""uvicorn settings that bound what a slow or idle client can hold: `fedmemes serve` and the SuperLink gate share them.

uvicorn 0.49 has a keep-alive timeout (between requests), a concurrency limit and a header-size cap, but no deadline
for reading a request's headers: a client that sends one header byte a second (slowloris) keeps its connection, and
a connection that sends nothing at all is never closed. `HeaderDeadline` adds that deadline to uvicorn's own h11
protocol: from the moment a connection opens (or its previous response ends) the client has `header_timeout_s` to
finish its request line and headers, or the connection is closed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class SlowClientLimits:
    """How long and how much a client may take before it is cut off."""

    header_timeout_s: float = 10.0  # request line + headers; a real client sends them in one packet
    keep_alive_s: int = 5  # uvicorn's timeout_keep_alive: an idle connection between requests
    max_connections: int = 256  # uvicorn's limit_concurrency: more concurrent connections or tasks get 503
    max_header_bytes: int = 16 * 1024  # h11_max_incomplete_event_size: the request line and headers together

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Return the uvicorn.Config keyword arguments that apply these limits (the h11 protocol, never httptools)."""
        return {
            "http": header_deadline_protocol(self.header_timeout_s),
            "timeout_keep_alive": self.keep_alive_s,
            "limit_concurrency": self.max_connections,
            "h11_max_incomplete_event_size": self.max_header_bytes,
        }


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within the deadline."""

    header_timeout_s = 10.0  # set per server by header_deadline_protocol
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._start_header_timer()  # the next request on this keep-alive connection gets a fresh deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline_passed)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        # h11 leaves IDLE once a request's headers are parsed: a request being read or answered is not cut off here.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info(
                "closed a connection from %s: no complete request headers in %ss", self.client, self.header_timeout_s
            )
            self.transport.close()


def header_deadline_protocol(header_timeout_s: float) -> type[HeaderDeadline]:
    """Return a HeaderDeadline class with this deadline (uvicorn builds one protocol object per connection)."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout_s": header_timeout_s})
