"""What `fedmemes simulate -m` (Hydra's multirun) adds around each job: a check of every swept value before the first
job starts, a failed job that lets the others run, and the objective a sweeper optimises (dev, never test)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("fedmemes.sweep")

MULTIRUN_FLAGS = ("-m", "--multirun")


class SweepJobFailed(RuntimeError):
    """A sweep job that ended with an exit code. Raised in its place: Hydra records an Exception as a failed job and
    runs the others, while a SystemExit (a BaseException) would end the whole sweep at once."""


def is_multirun(args: list[str]) -> bool:
    """Whether the command line asks Hydra for a multirun."""
    return any(a in MULTIRUN_FLAGS for a in args)


def check_variants(overrides: list[str]) -> list[list[str]]:
    """Return the override lists that cover every swept value: the first value of each swept key, then each other
    value of one key at a time (linear, not the product). A key Optuna samples from a range (interval, tag(log, ...))
    keeps its default; hydra.sweeper settings are Hydra's to check. Raise ValueError naming a malformed override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    fixed: list[str] = []
    swept: list[list[str]] = []
    for text in overrides:
        if text.startswith(("hydra.sweeper", "hydra/sweeper")):
            continue
        try:
            o = parser.parse_override(text)
        except HydraException as err:  # Hydra's grammar error (an OverrideParseException or its base)
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"{text}: {why}; a sweep lists values as key=a,b,c or key=range(1,4)") from None
        if not o.is_sweep_override():
            fixed.append(text)
        elif o.is_discrete_sweep():
            try:
                swept.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
            except Exception:  # glob(...) over a group: Hydra expands and checks it itself
                continue
    first = [choices[0] for choices in swept]
    variants = [fixed + first]
    for i, choices in enumerate(swept):
        variants += [[*fixed, *first[:i], other, *first[i + 1 :]] for other in choices[1:]]
    return variants


def sweeper_defaults(args: list[str]) -> list[str]:
    """Return overrides that make `hydra/sweeper=optuna` maximise (the plugin minimises unless told): the objective is
    the hold-out AUROC the job returns."""
    if "hydra/sweeper=optuna" in args and not any(a.startswith("hydra.sweeper.direction=") for a in args):
        return ["hydra.sweeper.direction=maximize"]
    return []


def in_multirun() -> bool:
    """Whether this Hydra job is one of a multirun's jobs."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def job_exit_as_failure(run_dir: Path) -> Iterator[None]:
    """In a multirun, turn the job's non-zero exit into SweepJobFailed (logged now, named again by Hydra when the
    sweep ends with exit 1); a single run keeps its own exit code."""
    if not in_multirun():
        yield
        return
    try:
        yield
    except SystemExit as stop:
        if stop.code in (0, None):
            return
        why = stop.code if isinstance(stop.code, str) else f"exit code {stop.code}"
        log.error("sweep job %s failed: %s; the other jobs go on", run_dir, why)
        raise SweepJobFailed(f"sweep job {run_dir} failed: {why}") from None
