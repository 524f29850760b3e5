"""`fedmemes runs SWEEP_DIR`: one table of a Hydra sweep (`fedmemes simulate -m ...`), grouped by the keys it swept,
with mean ± std over seeds of dev and test AUROC, test macro-F1 and time; an Optuna sweep's trials and its pick."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedmemes.tools.run_scores import best_holdout_auroc, finite, read_metrics

MULTIRUN_FILE = "multirun.yaml"  # Hydra writes it in the sweep folder when the sweep starts
OPTUNA_FILE = "optimization_results.yaml"  # the Optuna sweeper writes it when the study ends
SEED_KEYS = ("random_seed",)  # repeats of one setting: averaged over, never a group


@dataclass(frozen=True)
class Job:
    """One job of a sweep: its folder, the overrides it ran with and its scores (None: not there)."""

    name: str  # the job's folder, relative to the sweep folder (Hydra's job number)
    overrides: dict[str, str]
    dev_auroc: float | None  # best hold-out AUROC after round 0: what a sweeper may optimise
    test_auroc: float | None
    test_f1_macro: float | None
    seconds: float | None  # the server's clock at its last round: training and hold-out scoring, not Ray's start
    finished: bool  # test scored


@dataclass
class Group:
    """The jobs of one setting of the swept keys."""

    values: tuple[str, ...]
    jobs: list[Job] = field(default_factory=list)

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if j.finished]


def is_sweep(folder: Path) -> bool:
    """Whether `folder` is a Hydra sweep folder (multirun.yaml at its top)."""
    return (folder / MULTIRUN_FILE).is_file() or (folder / OPTUNA_FILE).is_file()


def parse_overrides(lines: Sequence[Any]) -> dict[str, str]:
    """Map Hydra override strings (`key=value`, `+key=value`, `~key`) to {key: value}."""
    out: dict[str, str] = {}
    for line in lines:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value
    return out


def read_job(run_dir: Path, sweep_dir: Path) -> Job:
    """Read one job's overrides (.hydra/overrides.yaml) and scores (metrics.json)."""
    try:
        lines = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        lines = []
    metrics = read_metrics(run_dir)
    test: dict[str, Any] = metrics["test"] if isinstance(metrics.get("test"), dict) else {}
    rounds = [r for r in metrics.get("rounds") or [] if isinstance(r, dict)]
    seconds = [s for s in (finite(r.get("seconds")) for r in rounds) if s is not None]
    return Job(
        name=str(run_dir.relative_to(sweep_dir)),
        overrides=parse_overrides(lines if isinstance(lines, list) else []),
        dev_auroc=best_holdout_auroc(metrics),
        test_auroc=finite(test.get("auroc")),
        test_f1_macro=finite(test.get("f1_macro")),
        seconds=max(seconds) if seconds else None,
        finished=finite(test.get("auroc")) is not None,
    )


def read_sweep(sweep_dir: Path) -> list[Job]:
    """Read every job folder (one holding .hydra/) of a sweep, in job-number order."""
    dirs = {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")} - {sweep_dir}
    jobs = [read_job(d, sweep_dir) for d in dirs]
    return sorted(jobs, key=lambda j: (len(j.name), j.name))  # 2 before 10


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Return the keys whose value differs between jobs (a key some jobs lack counts), seeds left out."""
    keys = sorted({k for j in jobs for k in j.overrides})
    return [k for k in keys if k not in SEED_KEYS and len({j.overrides.get(k) for j in jobs}) > 1]


def group_jobs(jobs: Sequence[Job], keys: Sequence[str]) -> list[Group]:
    """Group jobs by their values of `keys`, groups in order of their first job."""
    groups: dict[tuple[str, ...], Group] = {}
    for j in jobs:
        values = tuple(j.overrides.get(k, "-") for k in keys)
        groups.setdefault(values, Group(values)).jobs.append(j)
    return list(groups.values())


def mean_std(xs: Sequence[float | None]) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the values present; None when there are none."""
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    if not vals:
        return None
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def _cell(xs: Sequence[float | None], digits: int = 3) -> str:
    stats = mean_std(xs)
    return "-" if stats is None else f"{stats[0]:.{digits}f} ± {stats[1]:.{digits}f}"


def group_rows(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Return one dict per group: its setting, n finished, and (mean, std) of each score over its finished jobs."""
    keys = swept_keys(jobs)
    rows = []
    for g in group_jobs(jobs, keys):
        done = g.finished
        rows.append(
            {
                "setting": dict(zip(keys, g.values, strict=True)),
                "n": len(done),
                "jobs": [j.name for j in g.jobs],
                "dev_auroc": mean_std([j.dev_auroc for j in done]),
                "test_auroc": mean_std([j.test_auroc for j in done]),
                "test_f1_macro": mean_std([j.test_f1_macro for j in done]),
                "seconds": mean_std([j.seconds for j in done]),
            }
        )
    return rows


def format_sweep(jobs: Sequence[Job], best: dict[str, Any] | None = None) -> str:
    """Render the grouped table, the jobs that did not finish and an Optuna study's best trial."""
    keys = swept_keys(jobs)
    groups = group_jobs(jobs, keys)
    head = (*keys, "n", "dev AUROC", "test AUROC", "test macro-F1", "time s", "jobs")
    rows = [
        (
            *g.values,
            str(len(g.finished)),
            _cell([j.dev_auroc for j in g.finished]),
            _cell([j.test_auroc for j in g.finished]),
            _cell([j.test_f1_macro for j in g.finished]),
            _cell([j.seconds for j in g.finished], 0),
            ",".join(j.name for j in g.jobs),
        )
        for g in groups
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (head, *rows)]
    seeds = sorted({j.overrides[k] for j in jobs for k in SEED_KEYS if k in j.overrides}, key=lambda s: (len(s), s))
    lines.append(
        f"\n{len(jobs)} jobs; mean ± std over {'seeds ' + ','.join(seeds) if seeds else 'the jobs of a row'}; "
        "dev = best hold-out AUROC (what a sweeper optimises), test at the run's dev-chosen model and threshold"
    )
    if unfinished := [j.name for j in jobs if not j.finished]:
        lines.append(f"not finished (left out of n): jobs {', '.join(unfinished)}; see JOB/fedmemes.log")
    if best:
        lines.append(best_line(jobs, best))
    return "\n".join(lines)


def read_optuna(sweep_dir: Path) -> dict[str, Any] | None:
    """Return the Optuna sweeper's optimization_results.yaml (best_params, best_value), or None."""
    try:
        data = yaml.safe_load((sweep_dir / OPTUNA_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def best_job(jobs: Sequence[Job], best: dict[str, Any]) -> Job | None:
    """Return the job whose dev AUROC is Optuna's best_value and whose overrides hold its best_params."""
    value = finite(best.get("best_value"))
    params = {str(k): v for k, v in (best.get("best_params") or {}).items()}
    for j in jobs:
        same_params = all(_same(j.overrides.get(k), v) for k, v in params.items())
        if value is not None and j.dev_auroc is not None and math.isclose(j.dev_auroc, value) and same_params:
            return j
    return None


def _same(text: str | None, value: Any) -> bool:
    if text is None:
        return False
    try:
        return math.isclose(float(text), float(value))
    except (TypeError, ValueError):
        return text == str(value)


def best_line(jobs: Sequence[Job], best: dict[str, Any]) -> str:
    """One line naming the Optuna study's best trial: its job folder, parameters and dev AUROC."""
    job = best_job(jobs, best)
    params = " ".join(f"{k}={v}" for k, v in (best.get("best_params") or {}).items())
    where = f"job {job.name}" if job else "no job folder matches it"
    value = best.get("best_value")
    return f"Optuna's best trial ({OPTUNA_FILE}, chosen on dev AUROC): {where}: {params} -> dev AUROC {value}"
