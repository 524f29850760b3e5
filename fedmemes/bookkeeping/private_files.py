"""Write files owner-only (0600) from their first byte, atomically and durably: readers see the old file or the whole
new one, never a part, even after kill -9 or a power cut.

The one place that writes this way (and fsyncs): a temporary file in the target's folder (same
filesystem, so the rename is atomic), created 0600, written, flushed and fsynced before
`os.replace`, then the folder fsynced so the rename itself survives a crash. On any error (a full
disk, Ctrl-C) the temporary file is removed.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

MODE = 0o600  # what every file in a run folder gets (README, "What a run leaves behind")


@contextmanager
def private_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`, created 0600 (never readable by others, not even for a moment); on success
    it is fsynced and replaces `path`, on an error it is removed."""
    path = Path(path)
    # mkstemp: 0600, O_EXCL, a name unique per call (two threads never share one); `.tmp` keeps it out of every glob
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is None and err.errno is not None:  # a failed write or fsync names no file: name ours
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def remove_stale(folder: Path | str, also: tuple[str, ...] = ()) -> list[Path]:
    """Remove the temporaries a killed writer left in `folder` (`.NAME.*.tmp`, and the names in `also`); return them.

    Call it only where no writer runs yet (a run's start): a live writer's temporary looks the same."""
    folder = Path(folder)
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()] + [p for p in map(folder.joinpath, also) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_folder(folder: Path) -> None:
    # The rename lives in the folder's entries; without this a crash may bring back the old name.
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform that cannot open folders (Windows) has nothing to fsync here
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the file itself is already durable
    finally:
        os.close(fd)


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
