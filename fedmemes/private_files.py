"""Write a run's files owner-only (0600) from their first byte, and atomically: a crash mid-write keeps the old file."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

MODE = 0o600  # what every file in a run folder gets (README, "What a run leaves behind")


@contextmanager
def private_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`, created 0600 (never readable by others, not even for a moment); on success
    it replaces `path`, on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # O_EXCL below: a stale temporary keeps no mode of its own
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), MODE)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> Path:
    """Write `text` (UTF-8) to `path`, 0600 and atomically."""
    with private_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_bytes(path: Path | str, data: bytes) -> Path:
    """Write `data` to `path`, 0600 and atomically."""
    with private_open(path, "wb") as f:
        f.write(data)
    return Path(path)


class PrivateFileHandler(logging.FileHandler):
    """A logging.FileHandler whose file is created 0600 (the run's log, named in conf/hydra/job_logging)."""

    def _open(self) -> io.TextIOWrapper:
        text = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors, opener=_private)  # noqa: SIM115
        return cast(io.TextIOWrapper, text)  # text mode: what FileHandler itself opens


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, MODE)
