"""Read what a run directory holds (metrics.json, config.yaml, test predictions) for the report."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedmemes.bookkeeping import private_files, run_config
from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.tracking.base import flatten

PREDICTIONS_FILE = "test_predictions.csv"
# Keys that differ between any two runs without being a choice of the experiment.
NOT_A_CHOICE = {"run_dir", "resume", "cache_dir", "verbose", "server.flwr_home"}


def save_test_predictions(run_dir: Path, prob: np.ndarray, label: np.ndarray) -> Path:
    """Write the best model's test probabilities as CSV (p_hateful,label): the report's ROC/PR curves come from it."""
    path = Path(run_dir) / PREDICTIONS_FILE
    with private_files.private_open(path, "w", newline="") as f:  # 0600 like every run file
        out = csv.writer(f)
        out.writerow(("p_hateful", "label"))
        out.writerows((f"{p:.6g}", int(y)) for p, y in zip(prob.tolist(), label.tolist(), strict=True))
    return path


@dataclass
class Run:
    """One run directory as the report sees it."""

    path: Path
    name: str
    metrics: dict[str, Any]
    config: dict[str, Any]
    prob: np.ndarray | None = None  # test P(hateful) of the best round's model
    label: np.ndarray | None = None
    flat_config: dict[str, Any] = field(default_factory=dict)

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.metrics.get("rounds") or []

    @property
    def threshold(self) -> float:
        """Return the decision threshold the run stored (picked on the hold-out), else 0.5."""
        # metrics.json test.threshold
        value = (self.metrics.get("test") or {}).get("threshold", self.metrics.get("threshold"))
        return float(value) if isinstance(value, (int, float)) else 0.5


def load_run(path: Path, name: str | None = None) -> Run:
    """Read a run directory; fail with the fix when it holds no metrics.json."""
    path = Path(path).expanduser().resolve()
    metrics_file = path / METRICS_FILE
    if not metrics_file.is_file():
        raise FileNotFoundError(
            f"{metrics_file}: no such file; pass a run directory (e.g. outputs/2026-01-31/12-00-00)"
        )
    try:
        metrics = json.loads(metrics_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{metrics_file}: line {err.lineno}: not valid JSON ({err.msg})") from None
    config_file = path / "config.yaml"
    config = run_config.read(path) if config_file.is_file() else {}  # data only: refuses a key that could run code
    run = Run(path, name or path.name, metrics, config, flat_config=flatten(config))
    predictions = path / PREDICTIONS_FILE
    if predictions.is_file():
        run.prob, run.label = read_test_predictions(predictions, (metrics.get("test") or {}).get("n"))
    return run


def read_test_predictions(path: Path, expected: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return (p_hateful, label) of every test meme; raise ValueError naming the file and row when it is damaged.

    The file is written atomically, so a short or broken one is damage, never a run still writing: no curve is
    drawn from part of the rows."""
    fix = f"rebuild it from the run's best model: fedmemes predict {path.parent} --run-split test --out {path}"
    prob, label = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if next(reader, None) != ["p_hateful", "label"]:
            raise ValueError(f"{path}: row 1 is not the header p_hateful,label; the file is damaged: {fix}")
        for row in reader:
            try:
                p, y = (float(row[0]), int(row[1])) if len(row) == 2 else (math.nan, -1)
            except ValueError:
                p, y = math.nan, -1
            if not (0.0 <= p <= 1.0 and y in (0, 1)):
                raise ValueError(
                    f"{path}: row {reader.line_num} is {','.join(row)!r}, not p_hateful,label (cut short?); the "
                    f"file is damaged: {fix}"
                )
            prob.append(p)
            label.append(y)
    if expected is not None and len(prob) != int(expected):
        raise ValueError(
            f"{path}: {len(prob)} rows after the header, metrics.json's test scores count {expected} memes "
            f"(cut after row {reader.line_num}?); the file is damaged: {fix}"
        )
    return np.array(prob), np.array(label)


def run_names(paths: list[Path]) -> list[str]:
    """Return short distinct labels: the folder name, with its parent when two names clash (outputs/DATE/TIME)."""
    paths = [Path(p).expanduser().resolve() for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {n}" for i, n in enumerate(names)]
    return names


def config_differences(runs: list[Run]) -> list[tuple[str, list[Any]]]:
    """Return (key, values per run) for each config key whose value differs between the runs."""
    keys = sorted(set().union(*(r.flat_config for r in runs)) - NOT_A_CHOICE)
    missing = object()
    diffs = []
    for key in keys:
        values = [_relative_to_cache(r.flat_config.get(key, missing), r.flat_config.get("cache_dir")) for r in runs]
        if any(v != values[0] for v in values[1:]):
            diffs.append((key, ["(absent)" if v is missing else v for v in values]))
    return diffs


def _relative_to_cache(value: Any, cache_dir: Any) -> Any:
    """Write paths under the run's cache_dir as ${cache_dir}/...: two machines' caches are no experiment choice."""
    if isinstance(value, str) and isinstance(cache_dir, str) and cache_dir and value.startswith(cache_dir):
        return "${cache_dir}" + value[len(cache_dir) :]
    return value
