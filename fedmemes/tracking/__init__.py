"""Experiment tracking: the `logger` config group's trackers (csv, tensorboard, mlflow), fanned out by `Trackers`."""

from fedmemes.tracking.base import (
    Tracker,
    Trackers,
    build_trackers,
    flatten,
    numbers,
    round_metrics,
    run_artifacts,
)

__all__ = ["Tracker", "Trackers", "build_trackers", "flatten", "numbers", "round_metrics", "run_artifacts"]
