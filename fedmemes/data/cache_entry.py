"""One feature-cache entry on disk: a safetensors file holding a tensor `x`, verified on every read.

An entry's header metadata carries `sha256`: a digest of the tensor's dtype, shape, the other
metadata (a shard's keys) and its bytes. Safetensors itself refuses a file whose size does not
match its header (truncated, extended, empty, garbage); the digest catches what keeps the size
(flipped bytes, a swapped dtype). It lives in the header, not in the name, because names are
keys of the *inputs* (found without reading anything) and the bytes are known only once encoded.
Hashing costs about 1.5 s per GB on a busy 2-core box, next to the minutes that encoding took.

A bad entry is logged in one line naming the file, deleted, and reported as absent, so the
caller rebuilds it. A write that fails (a full disk, a read-only folder) is logged in one line
and skipped: the features are still returned, only not cached.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from fedmemes.bookkeeping.private_files import write_bytes

log = logging.getLogger(__name__)

CHECKSUM = "sha256"
_MAX_HEADER = 100_000_000  # safetensors' own limit on a header's length
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def checksum(x: torch.Tensor, metadata: dict[str, str]) -> str:
    """Return the digest of `x` (dtype, shape, bytes) and of `metadata` (its own `sha256` left out)."""
    data = hashlib.sha256(x.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data).hexdigest()
    rest = sorted((k, v) for k, v in metadata.items() if k != CHECKSUM)
    return hashlib.sha256(json.dumps([str(x.dtype), list(x.shape), rest, data]).encode()).hexdigest()


def read_metadata(path: Path) -> dict[str, str] | None:
    """Return an entry's header metadata without reading its tensor; None if absent or unreadable (then deleted).

    Only the header is read: a shard whose tensor bytes are damaged is left alone by lookups of
    keys it does not hold. A header that cannot be parsed names no keys, so nobody can use it.
    """
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if not 0 < length <= min(_MAX_HEADER, size - 8):
                _discard(path, f"{size} bytes, not a safetensors header")
                return None
            header = json.loads(f.read(length))
    except FileNotFoundError:
        return None  # another client deleted or replaced it in the meantime
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _discard(path, f"unreadable header: {_one_line(e)}")
        return None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        _discard(path, "header without string metadata")
        return None
    return cast(dict[str, str], metadata)


def read_entry(path: Path, rows: int | None = None) -> tuple[torch.Tensor, dict[str, str]] | None:
    """Return a verified entry's tensor and metadata; None if absent or bad (a bad one is logged and deleted).

    `rows`: the number of rows the caller expects (its list's length, a shard's key count).
    """
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            x: torch.Tensor = f.get_tensor("x")
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        if not path.exists():
            return None  # absent (or deleted by another client while we looked): build it
        _discard(path, _one_line(e))
        return None
    if rows is not None and (x.dim() == 0 or x.shape[0] != rows):
        _discard(path, f"shape {tuple(x.shape)}, expected {rows} rows")
        return None
    if CHECKSUM not in metadata:
        # Written before entries carried a checksum: safetensors checked its size; add the digest once.
        log.info("feature cache: %s has no checksum (an older fedmemes wrote it); adding one", path)
        write_entry(path, x, metadata)
    elif metadata[CHECKSUM] != checksum(x, metadata):
        _discard(path, "checksum mismatch: its bytes changed after it was written")
        return None
    return x, {k: v for k, v in metadata.items() if k != CHECKSUM}


def write_entry(path: Path, x: torch.Tensor, metadata: dict[str, str] | None = None) -> bool:
    """Write `x` (and `metadata`) with its checksum, atomically; on an OSError log one line and return False."""
    meta = {k: v for k, v in (metadata or {}).items() if k != CHECKSUM}
    x = x.detach().contiguous()
    meta[CHECKSUM] = checksum(x, meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Serialized in memory, written by Python: a full disk raises an OSError with its errno
        # (safetensors' own file writer reports it as a SafetensorError).
        write_bytes(path, save({"x": x}, metadata=meta))
    except OSError as e:
        if e.errno in _DISK_FULL:
            log.warning(
                "feature cache: disk full writing %s (%s); continuing without caching it",
                path,
                _free_space(path.parent),
            )
        else:
            log.warning("feature cache: cannot write %s (%s); continuing without caching it", path, _one_line(e))
        return False
    return True


def _discard(path: Path, reason: str) -> None:
    log.warning("feature cache: %s is damaged (%s); deleted, it will be rebuilt", path, reason)
    try:
        path.unlink(missing_ok=True)
    except OSError as e:  # a read-only cache: skip the entry all the same
        log.warning("feature cache: cannot delete %s (%s)", path, _one_line(e))
    return None


def _free_space(folder: Path) -> str:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the folder itself may be what could not be created
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free on {folder}"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
