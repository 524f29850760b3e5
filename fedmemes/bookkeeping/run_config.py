"""A run folder is data, never code: check RUN/config.yaml before predict, serve, report or resume= use it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedmemes.models.old_targets import upgrade_targets
from fedmemes.privacy.site_policy import DEFAULT_TARGETS, target_allowed

CONFIG_FILE = "config.yaml"
# What predict and serve build from a run folder (--run-split also reads the hold-out through the run's data source):
# a class defined under these modules, resolved by site_policy.target_allowed, which imports only modules under them.
BUILT = {
    "model": ("fedmemes.models.",),  # the fusion model and its encoders
    "loss": ("fedmemes.federation.local_objectives.",),
    "dataset": ("fedmemes.data.",),
}
KIND = {  # how a refusal names what the key must be
    "model": "a fedmemes model or encoder class",
    "loss": "a fedmemes loss class",
    "dataset": "a fedmemes data source class",
    "": "a class fedmemes names there (site_policy.DEFAULT_TARGETS)",
}
# Every other `_target_` (strategy, partition, optimizer, logger) is never built from a run folder; it must still be
# one a site runs by default, compared as text: nothing is imported for it.
UNBUILT = DEFAULT_TARGETS
# The one Hydra flag fedmemes writes: optimizers are built per client, with the model's parameters added later.
PARTIAL_AT = "optimizer._partial_"
DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
RULE = (
    "a run folder is data: predict, serve, report and resume= build only fedmemes' own model, encoder, loss and "
    "data classes from it; use a run folder written by fedmemes, or rerun the training"
)


class RunConfigError(ValueError):
    """RUN/config.yaml names code to run, or is no run's config: one line naming the file and the key."""


def _section(where: str) -> str:
    return re.split(r"[.\[]", where, maxsplit=1)[0]


def _unbuilt_ok(target: str) -> bool:
    return bool(DOTTED.fullmatch(target)) and any(
        target == entry or (entry.endswith(".") and target.startswith(entry)) for entry in UNBUILT
    )


def _target_ok(target: Any, where: str) -> bool:
    if not isinstance(target, str):
        return False
    section = _section(where)
    if section in BUILT:
        return bool(DOTTED.fullmatch(target)) and target_allowed(target, list(BUILT[section]))
    return bool(where) and _unbuilt_ok(target)  # a `_target_` at the top level is nothing fedmemes writes


def problems(node: Any, where: str = "") -> Iterator[str]:
    """Yield what in a run's config (plain dicts and lists, not resolved) could run code; nothing is built."""
    if isinstance(node, dict):
        for key, value in sorted(node.items(), key=lambda item: item[0] != "_target_"):  # the target is named first
            here = f"{where}.{key}" if where else str(key)
            if key == "_target_":
                if not _target_ok(value, where):
                    yield f"{here}={value} is not {KIND.get(_section(where), KIND[''])}"
            elif isinstance(key, str) and len(key) > 2 and key[0] == key[-1] == "_":
                if not (here == PARTIAL_AT and value is True):
                    yield f"{here}: Hydra's {key} is not a key fedmemes writes"
            else:
                yield from problems(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from problems(value, f"{where}[{i}]")
    elif isinstance(node, str) and "${" in node:
        yield f"{where}={node} is an interpolation or resolver (fedmemes writes config.yaml resolved)"


def check(raw: Any, path: Path | str) -> dict[str, Any]:
    """Return a run's config (moved targets upgraded) when nothing in it could run code; else raise RunConfigError."""
    if not isinstance(raw, dict):
        raise RunConfigError(f"{path}: not a run's config (a YAML mapping); was the file replaced?")
    config: dict[str, Any] = upgrade_targets(raw)  # runs saved before a module move name the old paths
    found = list(problems(config))
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise RunConfigError(f"{path}: {found[0]}{more}; {RULE}")
    return config


def read(run_dir: Path | str) -> dict[str, Any]:
    """Read RUN/config.yaml as data (parsed once, never resolved) and check it; raise RunConfigError naming the key."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        parsed = OmegaConf.create(path.read_text())  # YAML's safe loader; interpolations stay unresolved text
        raw = OmegaConf.to_container(parsed, resolve=False) if isinstance(parsed, DictConfig) else None
    except (OmegaConfBaseException, yaml.YAMLError) as err:  # python/* tags are refused here too
        raise RunConfigError(f"{path}: not a run's config ({str(err).splitlines()[0]})") from None
    return check(raw, path)


def load(run_dir: Path | str) -> DictConfig:
    """Return RUN/config.yaml checked (`read`), as the DictConfig the builders take."""
    cfg = OmegaConf.create(read(run_dir))
    assert isinstance(cfg, DictConfig)  # read() returned a mapping
    return cfg


def run_folder_problem(run_dir: str | Path, need: str | None = CONFIG_FILE) -> str | None:
    """Say what is wrong with `run_dir` as a run folder (missing, a file, no `need` file in it), or None if nothing.

    Commands check this first, so a mistyped path is named before any complaint about the other arguments.
    """
    path = Path(run_dir).expanduser().absolute()
    if not path.exists():
        return f"no run folder at {path}: `fedmemes runs` lists the runs under outputs/ (each outputs/<date>/<time>)"
    if not path.is_dir():
        return f"{path} is a file, not a run folder: pass the folder that holds {need or CONFIG_FILE}"
    if need and not (path / need).is_file():
        return f"{path} is not a run folder (no {need} in it): `fedmemes runs {path}` lists the runs under it"
    return None
