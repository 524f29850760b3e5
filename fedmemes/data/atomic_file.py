"""Write a file so that readers see the old file or the whole new one, never a part, even after a power cut.

The one place that fsyncs: a temporary file in the target's folder (same filesystem, so the
rename is atomic), written, flushed and fsynced before `os.replace`, then the folder fsynced so
the rename itself survives a crash. On any error (a full disk, Ctrl-C) the temporary file is removed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably; raise the OSError of a failed write, leaving no temporary file."""
    # Unique per call, not per process: two threads (or in-process clients) never share one.
    # The `.tmp` suffix keeps it out of every `*.safetensors` glob.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


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
