"""`fedmemes runs [DIR]`: list the run directories under outputs/ with their config, scores and status; a sweep
folder (`fedmemes simulate -m ...`) gets one table grouped by its swept keys (tools/sweep_summary.py)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fedmemes.bookkeeping.checkpoint import CHECKPOINT_FILE
from fedmemes.bookkeeping.history import METRICS_FILE
from fedmemes.tools.run_scores import best_holdout_auroc, finite, read_metrics

STATUSES = ("finished", "resumable", "stopped")


@dataclass
class RunInfo:
    """One line of `fedmemes runs`."""

    path: str
    date: str
    model: str
    strategy: str
    partition: str
    clients: int | None
    rounds: str  # done/asked
    best_holdout_auroc: float | None
    test_auroc: float | None
    status: str


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _choice(choices: dict[str, Any], cfg: dict[str, Any], group: str, target: Any) -> str:
    """The config group's name as typed (hydra's choices), else the class name of its _target_."""
    if choices.get(group):
        return str(choices[group])
    return str(target).rsplit(".", 1)[-1] if target else "?"


def run_info(run_dir: Path) -> RunInfo:
    """Summarise one run directory from config.yaml, .hydra/hydra.yaml, metrics.json and the files present."""
    cfg = _read_yaml(run_dir / "config.yaml") or _read_yaml(run_dir / ".hydra" / "config.yaml")
    choices = (_read_yaml(run_dir / ".hydra" / "hydra.yaml").get("hydra") or {}).get("runtime", {}).get("choices") or {}
    metrics = read_metrics(run_dir)
    rounds = [r for r in metrics.get("rounds") or [] if isinstance(r, dict)]
    test = metrics.get("test") or {}
    if test and (run_dir / "best.safetensors").is_file():
        status = "finished"
    elif (run_dir / CHECKPOINT_FILE).is_file():
        status = "resumable"
    else:
        status = "stopped"
    stamp = min(
        (p.stat().st_mtime for p in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml") if p.is_file()),
        default=run_dir.stat().st_mtime,
    )
    strategy = (cfg.get("server") or {}).get("strategy") or {}
    done = max((int(r.get("round", 0)) for r in rounds), default=0)
    return RunInfo(
        path=str(run_dir),
        date=datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M"),
        model=_choice(choices, cfg, "model", (cfg.get("model") or {}).get("_target_")),
        strategy=_choice(choices, cfg, "strategy", strategy.get("_target_")),
        partition=_choice(choices, cfg, "partition", (cfg.get("partition") or {}).get("_target_")),
        clients=cfg.get("num_clients"),
        rounds=f"{done}/{cfg.get('num_rounds', '?')}",
        best_holdout_auroc=best_holdout_auroc(metrics),
        test_auroc=finite(test.get("auroc")),
        status=status,
    )


def find_runs(root: Path) -> list[Path]:
    """Return every directory under root that holds a run (a .hydra/ folder or a metrics.json)."""
    marks = {p.parent for p in root.rglob(METRICS_FILE)} | {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    if (root / METRICS_FILE).is_file() or (root / ".hydra").is_dir():
        marks.add(root)
    # A run's recipe trials (RUN/recipes/<name>/, server.recipes) are part of that run, listed in its recipes.json.
    return sorted(d for d in marks if not (d.parent.name == "recipes" and (d.parent.parent / "recipes.json").is_file()))


def format_table(runs: list[RunInfo], root: Path) -> str:
    """Render runs as a fixed-width table, paths relative to root."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    head = (
        "date",
        "model",
        "strategy",
        "partition",
        "clients",
        "rounds",
        "best hold-out",
        "test AUROC",
        "status",
        "run",
    )
    rows = [
        (
            r.date,
            r.model,
            r.strategy,
            r.partition,
            str(r.clients if r.clients is not None else "?"),
            r.rounds,
            num(r.best_holdout_auroc),
            num(r.test_auroc),
            r.status,
            _relative(r.path, root),
        )
        for r in runs
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    return "\n".join(
        "  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (head, *rows)
    )


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root.resolve())) or "."
    except ValueError:
        return path


def main(argv: list[str] | None = None) -> None:
    """`fedmemes runs [DIR] [--json]`."""
    p = argparse.ArgumentParser(
        prog="fedmemes runs", description="List runs: date, key config, best hold-out and test AUROC, status."
    )
    p.add_argument("dir", nargs="?", default="outputs", help="folder to search (default outputs/)")
    p.add_argument("--json", action="store_true", help="print one JSON object per run (per group of a sweep)")
    p.add_argument("--each", action="store_true", help="a sweep folder: list each job, not the grouped table")
    args = p.parse_args(argv)
    root = Path(args.dir).expanduser().resolve()
    if not root.is_dir():
        what = f"{root} is a file, not a folder" if root.exists() else f"no folder at {root}"
        raise SystemExit(f"error: {what}: runs live under outputs/ (or pass the folder that holds them)")
    from fedmemes.tools import sweep_summary as sweep

    if sweep.is_sweep(root) and not args.each:  # `fedmemes simulate -m ...`'s folder: one row per swept setting
        jobs = sweep.read_sweep(root)
        if args.json:
            print("\n".join(json.dumps(row) for row in sweep.group_rows(jobs)))
        else:
            print(sweep.format_sweep(jobs, sweep.read_optuna(root)) if jobs else f"no jobs under {root} yet")
        return
    runs = sorted((run_info(d) for d in find_runs(root)), key=lambda r: (r.date, r.path))
    if args.json:
        print("\n".join(json.dumps(asdict(r)) for r in runs))
    elif not runs:
        print(f"no runs under {root}")
    else:
        print(format_table(runs, root))
        print(
            "\nstatus: finished (test scored), resumable (`fedmemes simulate resume=RUN_DIR [same overrides]`), "
            "stopped (nothing to resume)"
        )


if __name__ == "__main__":
    main()
