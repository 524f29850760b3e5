"""Where a listener may serve plain text: loopback only, unless the operator opts in with an `insecure` flag."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Return whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_plain_text(what: str, host: str, encrypted: bool, insecure: bool, fix: str) -> None:
    """Raise ValueError when `what` would listen (or send secrets) beyond this machine in clear without opt-in."""
    if encrypted or insecure or is_loopback(host):
        return
    raise ValueError(f"{what} {host!r} is reachable from other machines but would be unencrypted; {fix}")
