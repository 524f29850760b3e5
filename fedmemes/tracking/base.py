"""The tracker interface and the fan-out the ServerApp talks to; a tracker that fails never fails the run."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return {'a.b.c': leaf} for a nested mapping (lists stay leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """One experiment tracker: it receives the config once, scalars per round, and the run's files at the end."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def log_config(self, config: dict[str, Any]) -> None:
        """Record the resolved run config (nested dict)."""

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record scalars (names like 'holdout/auroc', 'clients/train_loss', 'test/auroc') at round `step`."""

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Record the run's final files (models, metrics.json, report)."""

    def close(self) -> None:
        """Flush and release what the tracker holds."""

    def resume_after(self, step: int, metrics: Mapping[str, float]) -> None:
        """A resumed run goes on after round `step`, whose scalars are `metrics`: log them where a kill between that
        round's checkpoint and its log lost them, never twice. Default: nothing (a tracker that cannot tell)."""


class Trackers(Tracker):
    """Fan every call out to the configured trackers; log and disable a tracker that raises."""

    def __init__(self, run_dir: str | Path, trackers: list[Tracker]) -> None:
        super().__init__(run_dir)
        self.trackers = trackers

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as err:  # noqa: BLE001  tracking is a side channel: the federation goes on without it
                log.warning(
                    "logger %s failed in %s (%s: %s); it is switched off for this run",
                    type(tracker).__name__,
                    method,
                    type(err).__name__,
                    err,
                )
                self.trackers.remove(tracker)

    def log_config(self, config: dict[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self._each("log_metrics", step, numbers(metrics))

    def resume_after(self, step: int, metrics: Mapping[str, float]) -> None:
        if step > 0:
            self._each("resume_after", step, numbers(metrics))

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        self._each("log_artifacts", [p for p in paths if Path(p).is_file()])

    def close(self) -> None:
        self._each("close")

    def finish(self, step: int, test: Mapping[str, float] | None) -> None:
        """Log the test scores and the run's files (models, metrics, predictions, report), then close."""
        if not self.trackers:
            return
        self.log_metrics(step, {f"test/{k}": v for k, v in (test or {}).items()})
        self.log_artifacts(run_artifacts(self.run_dir))
        self.close()


ARTIFACTS = (
    "config.yaml",
    "metrics.json",
    "best.safetensors",
    "final.safetensors",
    "test_predictions.csv",
    "report.html",
    "report.md",
    "clients.json",
)


def run_artifacts(run_dir: Path) -> list[Path]:
    """Return the run's final files that trackers keep: models, metrics, predictions, report and its figures."""
    return [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()] + sorted(
        (run_dir / "report").glob("*.png")
    )


def numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Keep the scalars trackers take: numbers, not flags, lists or text."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def round_metrics(holdout: Mapping[str, Any], clients: Mapping[str, Any]) -> dict[str, Any]:
    """Name a round's scalars for the trackers: holdout/<key> (server scoring) and clients/<key> (averaged train
    metrics)."""
    return {**{f"holdout/{k}": v for k, v in holdout.items()}, **{f"clients/{k}": v for k, v in clients.items()}}


def _plain(node: DictConfig) -> dict[str, Any]:
    return cast("dict[str, Any]", OmegaConf.to_container(node, resolve=True))


def build_trackers(cfg: DictConfig, run_dir: Path) -> Trackers:
    """Instantiate every tracker under `cfg.logger` (logger=csv, logger=[csv,mlflow]); none when the group is empty."""
    group = cfg.get("logger") or {}
    trackers = []
    for name, node in group.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(
                f"config key logger.{name}: expected a mapping with _target_ (see fedmemes/conf/logger/*.yaml)"
            )
        kwargs = {str(k): v for k, v in _plain(node).items() if k != "_target_"}
        try:  # get_class + call, not instantiate: Hydra would wrap the ImportError this names the fix of
            trackers.append(get_class(node._target_)(run_dir=run_dir, **kwargs))
        except ImportError as err:
            raise ImportError(
                f"logger={name} needs an optional package ({err}); install it with: pip install 'fedmemes[tracking]'"
            ) from err
    out = Trackers(run_dir, trackers)
    if trackers:
        out.log_config(_plain(cfg))
    return out
