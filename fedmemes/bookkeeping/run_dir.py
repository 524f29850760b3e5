"""Guard a run directory: a fresh run never overwrites an earlier run's results; a resume fits its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import checkpoint, checkpoint_files, resume_config, run_config
from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.federation import recipe_search

log = logging.getLogger(__name__)

RESULT_FILES = (METRICS_FILE, checkpoint.CHECKPOINT_FILE, checkpoint_files.PREVIOUS)  # what a fresh run would overwrite
MODEL_FILES = ("best.safetensors", "final.safetensors")  # removed with them on overwrite=true


class RunDirError(FileExistsError):
    """A fresh run pointed at a directory that holds an earlier run's results."""


def check_fresh(run_dir: Path, resume: Any = None, overwrite: bool = False) -> None:
    """Refuse a fresh run in a directory holding metrics.json or checkpoint.pt, naming the ways out; with overwrite=true
    clear them."""
    run_dir = Path(run_dir)
    if resume:
        return
    found = [name for name in RESULT_FILES if (run_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise RunDirError(
            f"{run_dir} already holds {' and '.join(found)} of an earlier run, which a fresh run would overwrite. "
            f"Continue that run with resume={run_dir}, replace it with overwrite=true, "
            "or choose another directory (hydra.run.dir=...)"
        )
    for name in (*RESULT_FILES, *MODEL_FILES):  # a later resume must never mix the old run's checkpoint into this one
        (run_dir / name).unlink(missing_ok=True)
    log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(found), run_dir)


def check_resume(run_dir: Path, cfg: Any) -> None:
    """Fail before any client trains if resume=RUN_DIR has no readable checkpoint, one made with another model or
    strategy, or a config that changes what the run computes."""
    if (Path(run_dir) / run_config.CONFIG_FILE).is_file():  # a run folder is data: refuse one that names code
        run_config.read(run_dir)
        if not (Path(run_dir) / recipe_search.RECIPES_FILE).is_file():  # else the ServerApp checks, with the recipe
            resume_config.check(run_dir, cfg)
    ckpt = checkpoint.load(run_dir)  # FileNotFoundError / CheckpointDamaged name the way on
    # tensor shapes are checked by the ServerApp, which builds the model
    checkpoint.check_fits(ckpt, cfg, None, run_dir)


def prepare(run_dir: Path, cfg: Any) -> None:
    """Run the checks a starting run needs: fresh-run guard, or a fitting checkpoint when resuming; raise SystemExit
    with the fix."""
    try:
        check_fresh(run_dir, cfg.get("resume"), bool(cfg.get("overwrite", False)))
        if cfg.get("resume"):
            check_resume(run_dir, cfg)
    except (RunDirError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
