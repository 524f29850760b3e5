"""Fetch an image URL for `fedmemes serve` without letting a caller reach the server's own network (SSRF).

Only hosts on the operator's allow-list (`--allow-url`) are fetched. Each hop (the URL, then every redirect, followed
here and bounded) is checked: allowed host, http(s), every address its name resolves to public (not loopback,
private, link-local, multicast, reserved or unspecified); then the connection goes to the very address that was
checked, so a second DNS answer cannot swap in another one (rebinding). One deadline covers the whole fetch and the
body is capped. Nothing is connected to before its checks pass.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024


class UrlRefused(ValueError):
    """A URL this service will not fetch, or a fetch that failed; the message is for the server's log only."""


def allow_list(value: str) -> frozenset[str]:
    """Parse `--allow-url HOST[,HOST...]` into lower-case host names."""
    return frozenset(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())


def resolve(host: str, port: int) -> list[IPAddress]:
    """Return every address `host` resolves to (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def is_public(host: str, ip: IPAddress) -> bool:
    """Return whether `ip` may be connected to: none of the ranges that reach the server's own networks."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    blocked = ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_multicast or ip.is_reserved
    # not is_global also covers shared address space (100.64.0.0/10) and other special-purpose ranges.
    return not (blocked or ip.is_unspecified or not ip.is_global)


@dataclass(frozen=True)
class UrlPolicy:
    """What `fetch` may reach and how long and how much it may take."""

    hosts: frozenset[str]  # exact host names (or IP literals) from --allow-url, lower case
    deadline_s: float = 10.0  # the whole fetch: DNS, connect, every redirect, the body
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 3
    # Tests swap these for a fake resolver / a check that lets one test server through; nothing else should.
    resolver: Callable[[str, int], list[IPAddress]] = field(default=resolve)
    allowed: Callable[[str, IPAddress], bool] = field(default=is_public)


def _checked_address(url: str, policy: UrlPolicy) -> tuple[str, str, int, IPAddress, str]:
    """Return (scheme, host, port, address, path) for one hop, or raise UrlRefused before anything is connected."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UrlRefused(f"{url!r}: only http(s) URLs are fetched")
    host = (parts.hostname or "").lower()
    if host not in policy.hosts:
        raise UrlRefused(f"{url!r}: host {host!r} is not on the --allow-url list")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused(f"{url!r}: credentials in URLs are refused")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = policy.resolver(host, port)
    except (OSError, ValueError) as e:
        raise UrlRefused(f"{url!r}: cannot resolve {host!r} ({e})") from e
    refused = [str(ip) for ip in addresses if not policy.allowed(host, ip)]
    if not addresses or refused:
        raise UrlRefused(f"{url!r}: {host!r} resolves to a non-public address {refused or addresses}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, addresses[0], path


class _Pinned(http.client.HTTPConnection):
    """An HTTP connection to an already-checked address; Host header and TLS name stay the URL's host."""

    def __init__(self, host: str, port: int, ip: IPAddress, timeout: float, tls: ssl.SSLContext | None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.ip, self.tls = ip, tls
        self.pinned: socket.socket | None = None  # kept: http.client drops self.sock when the response owns it

    def connect(self) -> None:
        sock = socket.create_connection((str(self.ip), self.port), self.timeout)
        # Certificates are checked against the host name, not the address connected to.
        self.sock = self.pinned = self.tls.wrap_socket(sock, server_hostname=self.host) if self.tls else sock


def _remaining(deadline: float, url: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise UrlRefused(f"{url!r}: over the fetch deadline")
    return left


def fetch(url: str, policy: UrlPolicy) -> bytes:
    """Return the body of `url` after the checks in this module's docstring; raise UrlRefused otherwise."""
    deadline = time.monotonic() + policy.deadline_s
    for _ in range(policy.max_redirects + 1):
        scheme, host, port, ip, path = _checked_address(url, policy)
        tls = ssl.create_default_context() if scheme == "https" else None
        conn = _Pinned(host, port, ip, _remaining(deadline, url), tls)
        try:
            conn.request("GET", path, headers={"Accept": "image/*", "User-Agent": "fedmemes-serve"})
            response = conn.getresponse()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise UrlRefused(f"{url!r}: redirect without a Location")
                url = urljoin(url, location)
                continue
            if response.status != 200:
                raise UrlRefused(f"{url!r}: HTTP {response.status}")
            return _read_capped(conn, response, deadline, policy.max_bytes, url)
        except (OSError, http.client.HTTPException) as e:
            raise UrlRefused(f"{url!r}: {type(e).__name__}: {e}") from e
        finally:
            conn.close()
    raise UrlRefused(f"{url!r}: more than {policy.max_redirects} redirects")


def _read_capped(conn: _Pinned, response: http.client.HTTPResponse, deadline: float, cap: int, url: str) -> bytes:
    """Read the body in chunks, each read bounded by what is left of the deadline, stopping past `cap` bytes."""
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise UrlRefused(f"{url!r}: Content-Length {length} is over {cap:,} bytes")
    data = bytearray()
    while True:
        if conn.pinned is not None:
            conn.pinned.settimeout(_remaining(deadline, url))  # a server dripping bytes still ends at the deadline
        chunk = response.read1(_CHUNK)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > cap:
            raise UrlRefused(f"{url!r}: body is over {cap:,} bytes")
