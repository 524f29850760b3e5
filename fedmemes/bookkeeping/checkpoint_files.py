"""The checkpoint's files: the latest (checkpoint.pt) and the one before it (checkpoint.prev.pt), checked on read.

Two are kept so that one damaged file never loses a run: before a new checkpoint is written, the current one, when
it is whole, is hard-linked as checkpoint.prev.pt (no copy; the new file then replaces checkpoint.pt's name, never
its bytes). At every moment at least one whole checkpoint is on disk: a crash, a full disk or a damaged file costs
at most the rounds since the previous one, which a resume trains again.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import private_files

log = logging.getLogger(__name__)

LATEST = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"
LEGACY_TEMP = "checkpoint.tmp"  # what fedmemes wrote through before private_files: removed at a run's start


class CheckpointDamaged(ValueError):
    """No checkpoint of the run can be read: one line saying what is damaged, what is intact and the way on."""


def problem(path: Path) -> str | None:
    """Return why `path` is no whole checkpoint ("is missing", "is empty", ...), or None when it is whole."""
    if not path.is_file():
        return "is missing"
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    try:  # torch.save writes a zip archive with a CRC per entry: a cut or changed byte shows here
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"is truncated or damaged ({size} bytes, not a whole archive: {err})"
    return None if bad is None else f"is damaged ({size} bytes; {bad} fails its checksum)"


def write(run_dir: Path, data: bytes) -> Path:
    """Keep the current checkpoint as the previous one (when whole), then write `data` as the latest, atomically."""
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    if problem(latest) is None:  # a damaged latest never pushes out the whole previous one
        link = run_dir / f".{PREVIOUS}.link.tmp"  # a stale one is removed at the run's start like every temporary
        link.unlink(missing_ok=True)
        try:
            os.link(latest, link)
            os.replace(link, previous)
        except OSError:  # a filesystem without hard links: rename; until the new one lands, the previous is the latest
            link.unlink(missing_ok=True)
            os.replace(latest, previous)
    return private_files.write_bytes(latest, data)  # fsynced, then the folder: the link and the rename are durable


def read(run_dir: Path, reader: Callable[[Path], Any]) -> Any:
    """Return `reader(path)` of the latest whole checkpoint, falling back to the previous one with a warning; raise
    FileNotFoundError when the run has none, CheckpointDamaged when none can be read."""
    run_dir = Path(run_dir)
    tried: list[str] = []
    for name in (LATEST, PREVIOUS):
        path = run_dir / name
        why = problem(path)
        if why is None:
            try:
                data = reader(path)
            except ValueError as err:  # the safe loader refused it: an object, or bytes no torch file holds
                why = str(err)  # "cannot be read safely (...)"
            else:
                if tried:
                    log.warning(
                        "%s %s: resuming from %s (round %s); the rounds after it are trained again",
                        run_dir / LATEST,
                        tried[0].split(" ", 1)[1],
                        path,
                        data.get("server_round") if isinstance(data, dict) else "?",
                    )
                return data
        tried.append(f"{name} {why}")
    if all(t.endswith(" is missing") for t in tried):
        raise FileNotFoundError(
            f"{run_dir / LATEST} not found: resume=RUN_DIR needs a run directory whose server finished at least one "
            "round"
        )
    raise CheckpointDamaged(f"{run_dir}: {'; '.join(tried)}. {intact(run_dir)}")


def intact(run_dir: Path) -> str:
    """Return what a run without a readable checkpoint still holds, and the ways on that delete nothing."""
    kept = [
        n for n in ("metrics.json", "best.safetensors", "final.safetensors", "config.yaml") if (run_dir / n).is_file()
    ]
    said = f"Intact: {', '.join(kept)}" if kept else "Nothing else of the run is there"
    ways = "the rounds cannot be continued; start a new run in another directory (hydra.run.dir=NEW), this one is kept"
    if (run_dir / "best.safetensors").is_file():
        ways += f"; its best model serves as it is (fedmemes predict {run_dir} ...)"
    return f"{said}; {ways}"
