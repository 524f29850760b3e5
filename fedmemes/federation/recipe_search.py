"""Choose a recipe on the server's hold-out: each candidate trains a few rounds, the best hold-out AUROC wins.

`server.recipes` maps names to Hydra overrides (e.g. `frozen: model/text_encoder=frozen_ngrams lr=3e-4`).
Each candidate runs `server.trial_rounds` federated rounds from the same seeded initial model, scored
on the hold-out only (never on test); the one with the highest hold-out AUROC in any trial round is
chosen (ties: the first listed), and the run goes on from the winner's trial (its first rounds, run
with the same seeds), so the search costs trial_rounds x (candidates - 1) rounds. The choice is
written to `recipes.json` before the run goes on, so a resumed run keeps the recipe it chose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import private_files

RECIPES_FILE = "recipes.json"
TRIALS_DIR = "recipes"  # RUN/recipes/<name>/: each trial's own run folder


def _score(curve: list[float | None]) -> float:
    finite = [a for a in curve if a is not None]
    return max(finite) if finite else -math.inf  # a one-class hold-out scores nothing: never preferred


def load(run_dir: Path) -> dict[str, Any] | None:
    """Return the recorded choice of an earlier start of this run, or None when none was completed."""
    path = run_dir / RECIPES_FILE
    if not path.is_file():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record if record.get("chosen") else None


def _write(run_dir: Path, record: dict[str, Any]) -> None:
    private_files.write_text(run_dir / RECIPES_FILE, json.dumps(record, indent=2))


def choose(
    candidates: Mapping[str, str],
    trial: Callable[[str, str], list[float | None]],
    run_dir: Path,
    trial_rounds: int,
) -> dict[str, Any]:
    """Run `trial(name, overrides)` for each candidate (it returns the hold-out AUROC per round); record the best."""
    record: dict[str, Any] = {"trial_rounds": trial_rounds, "candidates": {}, "chosen": None, "overrides": ""}
    for name, overrides in candidates.items():
        # NaN (a one-class hold-out) is written as null: JSON has no NaN.
        curve = [a if a is not None and math.isfinite(a) else None for a in trial(name, str(overrides))]
        record["candidates"][name] = {"overrides": str(overrides), "holdout_auroc": curve, "best": _score(curve)}
        _write(run_dir, record)  # trials so far stay visible while the next one runs
    # max() keeps the first of equal scores: the order of server.recipes breaks ties.
    chosen = max(record["candidates"], key=lambda n: record["candidates"][n]["best"])
    record.update(chosen=chosen, overrides=record["candidates"][chosen]["overrides"])
    for entry in record["candidates"].values():
        entry["best"] = None if entry["best"] == -math.inf else entry["best"]  # JSON has no -inf
    _write(run_dir, record)
    return record
