"""Steps every run-starting command (`fedmemes simulate`, `fedmemes server`) takes around the federated run."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def quiet_libraries(verbose: bool) -> None:
    """Keep Flower, Ray and transformers at errors unless -v/--verbose asked for their logs."""
    # Flower and Ray log a lot at INFO; a person wants our per-round lines.
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.ERROR)
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning, same behaviour
    os.environ.setdefault("RAY_DEDUP_LOGS", "0" if verbose else "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")


class PrivateHydraFiles(Callback):
    """Create the run folder, .hydra/*.yaml and the log owner-only (0700/0600): Hydra writes them with plain open()
    before the job starts, so only the umask reaches them. The job itself runs with the caller's umask (fedmemes'
    own run files are 0600 through fedmemes.bookkeeping.private_files; the feature cache keeps the usual mode)."""

    def __init__(self) -> None:
        self.umask: int | None = None

    def _tighten(self) -> None:
        old = os.umask(0o077)
        os.umask(old | 0o077)  # never looser than the caller's own umask
        self.umask = old if self.umask is None else self.umask

    def _restore(self) -> None:
        if self.umask is not None:
            os.umask(self.umask)
            self.umask = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._tighten()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._tighten()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        self._tighten()  # the next job of a sweep writes its .hydra/ files before its on_job_start

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore()


def job_overrides(run_dir: Path) -> str:
    """Return this Hydra job's command-line overrides, with run_dir pinned to `run_dir`, as one shell string."""
    from hydra.core.hydra_config import HydraConfig

    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("run_dir=")]
    return shlex.join([*task, f"run_dir={run_dir}"])


def check_data(cfg: DictConfig, run_dir: Path, max_rows: int | None = None) -> str:
    """Validate the data and every client's split, record them in run_dir; exit with the fix on a problem."""
    from fedmemes.data.report import format_table, write_report
    from fedmemes.federation.node_datasets import data_issues, split_facts

    try:
        facts, issues = split_facts(cfg), data_issues(cfg)
    except (ValueError, FileNotFoundError) as e:  # DataError and partition errors name file/line/key and the fix
        raise SystemExit(f"error: {e}") from None
    json_path, png_path = write_report(facts, run_dir, issues)
    return f"{format_table(facts, issues, max_rows)}\nclient split: {json_path} and {png_path.name}"


# Exit codes of a run that wrote its files but did not finish soundly (metrics.json "ended"); 1, 2: Python, argparse.
EXIT_PRIVACY_BUDGET = 3  # server.dp.max_epsilon reached: the rounds before it stand
EXIT_NOTHING_AGGREGATED = 4  # no client reply was aggregated in any round: the model is the untrained one
EXIT_DISK = 5  # a write failed (disk full, I/O error): the files before it stand, resume=RUN_DIR continues the run
DISK_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EIO: "I/O error"}


class DiskError(OSError):
    """A write the disk refused, raised by the ServerApp with `disk_error`'s line as its message: Flower passes only
    `str(exception)` on to `fedmemes server`, in another process (the run's status details)."""


def disk_error(err: BaseException, run_dir: Path) -> str | None:
    """Return one line naming the file a full disk or an I/O error stopped, the free space and the way on; None for any
    other error (its cause chain is searched: Flower or torch may wrap it)."""
    seen = _disk_cause(err)
    if seen is None or seen.errno is None:
        return None
    if isinstance(seen, DiskError):  # the line was made where the write failed
        return str(seen.strerror)
    path = Path(seen.filename or run_dir)
    mount = path if path.is_dir() else path.parent
    while not mount.exists() or not os.path.ismount(mount):  # the filesystem it is on: the one to free
        if mount == mount.parent:
            break
        mount = mount.parent
    try:
        free = f"{shutil.disk_usage(mount).free / 2**20:.0f} MiB free on {mount}"
    except OSError:
        free = f"free space on {mount} unknown"
    fix = "free space" if seen.errno != errno.EIO else "check the disk (dmesg)"
    what = DISK_ERRORS[seen.errno]
    return (
        f"{what} writing {path} ({free}): {fix} and resume with "
        f"`fedmemes simulate resume={run_dir}` (or `fedmemes server resume={run_dir}`, same overrides); "
        "the files written before it are intact"
    )


def as_disk_error(err: BaseException, run_dir: Path) -> DiskError | None:
    """Return `err` as a DiskError carrying `disk_error`'s line when a full disk or an I/O error caused it."""
    line, seen = disk_error(err, run_dir), _disk_cause(err)
    return None if line is None or seen is None else DiskError(seen.errno, line)


def _disk_cause(err: BaseException) -> OSError | None:
    # the first full-disk or I/O OSError in the cause chain: Flower or torch may wrap it
    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in DISK_ERRORS):
        seen = seen.__cause__ or seen.__context__
    return seen if isinstance(seen, OSError) else None


def disk_error_in(details: str) -> str | None:
    """Return the one line of a DiskError found in Flower's status details of a failed run; None for any other."""
    # Flower's words: "ServerApp failed with exception: " + str(exception); str(DiskError) is "[Errno N] LINE"
    found = re.search(r"\[Errno (\d+)\] (.+)", details, re.DOTALL)
    if found is None or (what := DISK_ERRORS.get(int(found[1]))) is None or not found[2].startswith(f"{what} writing "):
        return None
    return found[2].strip()


@contextmanager
def disk_errors_end_run(run_dir: Path, say: bool = True) -> Iterator[None]:
    """End the command with EXIT_DISK on a full disk or an I/O error, after one line (unless the ServerApp, which
    logs it, already said it)."""
    try:
        yield
    except Exception as err:
        line = disk_error(err, run_dir)
        if line is None:
            raise
        if say:
            logging.getLogger(__name__).error("%s", line)
        raise SystemExit(EXIT_DISK) from None


def finish_command(run_dir: Path) -> None:
    """Print the finished run's summary; exit with its "ended" code when it stopped short of a sound finish."""
    print(summary(run_dir))
    ended = json.loads((run_dir / "metrics.json").read_text()).get("ended")
    if ended:
        print(f"error: {ended['reason']}", file=sys.stderr)
        raise SystemExit(int(ended["code"]))


def summary(run_dir: Path) -> str:
    """Return the finished run's table of hold-out rounds, its test scores and where its files are."""
    from fedmemes.data.report import format_issues

    metrics = json.loads((run_dir / "metrics.json").read_text())
    lines = ["", "round  hold-out AUROC  accuracy   loss"]
    for r in (r for r in metrics["rounds"] if "accuracy" in r):  # rows without scores: server.eval_every skipped them
        mark = "  <- best" if r["round"] == metrics["best_round"] else ""
        auroc = r["auroc"] or float("nan")
        lines.append(f"{r['round']:>5}  {auroc:>14.3f}  {r['accuracy']:>8.3f}  {r['loss']:>5.3f}{mark}")
    if spent := [r for r in metrics["rounds"] if r.get("epsilon") is not None]:  # strategy=dp_fixed's accountant
        last = spent[-1]
        lines.append(
            f"privacy spent (Flower's RDP accountant): epsilon {last['epsilon']:.3f} at delta {last['delta']:g} "
            f"after {last['dp_releases']} noised releases"
        )
    if metrics.get("stopped_early"):
        lines.append(f"stopped after round {metrics['stopped_early']}: no better hold-out for server.patience rounds")
    if recipes := metrics.get("recipes"):
        tried = ", ".join(f"{name} {(t['best'] or float('nan')):.3f}" for name, t in recipes["candidates"].items())
        lines.append(f"recipe chosen on the hold-out: {recipes['chosen']} ({recipes['overrides']}); trials: {tried}")
    test = metrics.get("test") or {}
    lines.append(f"data issues (rows skipped or kept partly): {format_issues(metrics.get('data_issues') or {})}")
    lines.append(
        f"test (best round's model): AUROC {test.get('auroc') or float('nan'):.3f}  "
        f"accuracy {test.get('accuracy', float('nan')):.3f}  "
        f"F1 {test.get('f1_macro', float('nan')):.3f}  n={test.get('n')}"
        + (f"  (at threshold {test['threshold']:.3f}, picked on the hold-out)" if "threshold" in test else "")
    )
    lines.append(f"run directory: {run_dir}")
    if (run_dir / "report.html").exists():
        lines.append(f"report: {run_dir / 'report.html'} (curves, test ROC/PR, clients; `fedmemes report` redraws it)")
    return "\n".join(lines)
