"""`logger=csv`: every scalar as a row step,name,value in <run_dir>/tracking/metrics.csv, plus the config and artifact
list."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping import private_files
from fedmemes.tracking.base import Tracker


class CsvLogger(Tracker):
    """Add scalars to a long-format CSV (one row per value: easy to pivot, never needs a header change)."""

    def __init__(self, run_dir: str | Path, folder: str = "tracking") -> None:
        super().__init__(run_dir)
        self.folder = self.run_dir / folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.metrics = self.folder / "metrics.csv"
        if not self.metrics.exists():  # a resumed run adds to its earlier rows
            private_files.write_text(self.metrics, "step,name,value\n")  # 0600 like every run file

    def log_config(self, config: dict[str, Any]) -> None:
        private_files.write_text(self.folder / "config.json", json.dumps(config, indent=2, default=str))

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        # Rewritten whole through private_files (atomic, fsynced; the file is small): a crash never leaves half a
        # row, and the rows a run stopped after this step left (later steps, or these names at it) are replaced, not
        # repeated, when a resume logs the step again.
        with self.metrics.open(newline="") as f:
            kept = [r for r in csv.reader(f) if r and (r[0] == "step" or _before(r, step, metrics))]
        with private_files.private_open(self.metrics, "w", newline="") as f:
            out = csv.writer(f)
            out.writerows(kept)
            out.writerows((step, name, repr(value)) for name, value in metrics.items())

    def resume_after(self, step: int, metrics: Mapping[str, float]) -> None:
        self.log_metrics(step, metrics)  # replaces the step's rows and drops later ones: never a repeat

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        with private_files.private_open(self.folder / "artifacts.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(("path", "bytes", "sha256"))
            for path in paths:
                digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                out.writerow(
                    (
                        Path(path).relative_to(self.run_dir) if Path(path).is_relative_to(self.run_dir) else path,
                        Path(path).stat().st_size,
                        digest,
                    )
                )


def _before(row: list[str], step: int, metrics: Mapping[str, float]) -> bool:
    """Whether a row stays when `metrics` are logged at `step`: an earlier step, or another name at this one."""
    if not row[0].isdigit():
        return False
    return int(row[0]) < step or (int(row[0]) == step and len(row) > 1 and row[1] not in metrics)
