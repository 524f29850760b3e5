"""Scores read back from a run folder's metrics.json, shared by `fedmemes runs`, its sweep table and the sweep
objective `fedmemes simulate` returns."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fedmemes.bookkeeping.history import METRICS_FILE


def finite(x: Any) -> float | None:
    """Return x as a float when it is a finite number, else None."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def best_holdout_auroc(metrics: dict[str, Any]) -> float | None:
    """Return a run's best hold-out (dev) AUROC after training began (round 0, the untrained model, never counts)."""
    rounds = [r for r in metrics.get("rounds") or [] if isinstance(r, dict)]
    aurocs = [a for a in (finite(r.get("auroc")) for r in rounds if r.get("round", 0) > 0) if a is not None]
    return max(aurocs) if aurocs else None


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Return a run's metrics.json, or {} when it is missing or unreadable."""
    try:
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}
