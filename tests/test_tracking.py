"""Experiment tracking (`logger=` group): csv, tensorboard and mlflow receive config, rounds, test scores and files."""

import csv
import sys

import pytest
import torch
from flwr.app import ArrayRecord
from run_helpers import bare_server_run

from fedmemes.bookkeeping import checkpoint
from fedmemes.config import load_config
from fedmemes.tracking import Tracker, Trackers, build_trackers, round_metrics

ROUNDS = [{"auroc": 0.5, "loss": 0.69}, {"auroc": 0.64, "loss": 0.61}, {"auroc": 0.81, "loss": 0.48}]


def _run(run_dir, overrides):
    """Drive the trackers as the ServerApp does: config, three rounds, test scores and files at the end."""
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "best.safetensors").write_bytes(b"weights")
    trackers = build_trackers(load_config(overrides), run_dir)
    for step, scores in enumerate(ROUNDS):
        trackers.log_metrics(step, round_metrics(scores, {"train_loss": 1.0 - step / 10} if step else {}))
    trackers.finish(2, {"auroc": 0.77, "n": 80})
    return trackers


def test_logger_none_builds_no_tracker(tmp_path):
    assert build_trackers(load_config(""), tmp_path).trackers == []
    assert build_trackers(load_config("logger=none"), tmp_path).trackers == []


def test_csv_logger_writes_every_round_the_test_scores_and_the_artifact_list(tmp_path):
    _run(tmp_path, "logger=csv")
    rows = list(csv.DictReader((tmp_path / "tracking" / "metrics.csv").open()))
    auroc = [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "holdout/auroc"]
    assert auroc == [(0, 0.5), (1, 0.64), (2, 0.81)]
    assert [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "clients/train_loss"] == [
        (1, 0.9),
        (2, 0.8),
    ]
    assert [float(r["value"]) for r in rows if r["name"] == "test/auroc"] == [0.77]
    assert '"num_rounds": 4' in (tmp_path / "tracking" / "config.json").read_text()
    artifacts = (tmp_path / "tracking" / "artifacts.csv").read_text()
    assert "best.safetensors,7," in artifacts and "metrics.json" in artifacts


@pytest.mark.slow  # importing mlflow and creating its SQLite store takes 10-60 s on the shared CI cores
def test_tensorboard_and_mlflow_together_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _run(tmp_path, "logger=[tensorboard,mlflow]")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("holdout/auroc")] == [(0, 0.5), (1, 0.64), (2, 0.81)]
    assert [round(e.value, 3) for e in events.Scalars("test/auroc")] == [0.77]
    assert "config/text_summary" in events.Tags()["tensors"]  # add_text lands as a tensor summary

    # the local store under the run dir
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("fedmemes").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "holdout/auroc")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.5), (1, 0.64), (2, 0.81)]
    assert run.data.params["num_rounds"] == "4" and run.data.params["optimizer._target_"]
    assert run.data.metrics["test/auroc"] == 0.77 and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "best.safetensors",
        "metrics.json",
        "config.json",
    }
    assert (tmp_path / "tracking" / "mlartifacts").is_dir()  # artifacts beside the run, not in the working directory


def test_a_failing_tracker_is_switched_off_and_the_run_goes_on(tmp_path, caplog):
    class Broken(Tracker):
        def log_metrics(self, step, metrics):
            raise OSError("disk full")

    class Counting(Tracker):
        calls = 0

        def log_metrics(self, step, metrics):
            Counting.calls += 1

    trackers = Trackers(tmp_path, [Broken(tmp_path), Counting(tmp_path)])
    trackers.log_metrics(0, {"holdout/auroc": 0.5})
    trackers.log_metrics(1, {"holdout/auroc": 0.6})
    assert Counting.calls == 2 and [type(t).__name__ for t in trackers.trackers] == ["Counting"]
    assert "logger Broken failed in log_metrics (OSError: disk full)" in caplog.text


def test_a_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if `fedmemes[tracking]` were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(
        ImportError, match=r"logger=mlflow needs an optional package .*pip install 'fedmemes\[tracking\]'"
    ):
        build_trackers(load_config("logger=mlflow"), tmp_path)


def test_csv_logger_of_a_resumed_run_writes_no_row_twice(tmp_path):
    first = build_trackers(load_config("logger=csv"), tmp_path)
    for step in (0, 1, 2):  # stopped after scoring round 2, before its checkpoint: round 2 is run again
        first.log_metrics(step, {"holdout/auroc": 0.5 + step / 10})
    resumed = build_trackers(load_config("logger=csv"), tmp_path)
    for step in (2, 3):
        resumed.log_metrics(step, {"holdout/auroc": 0.5 + step / 10})
    resumed.finish(3, {"auroc": 0.77})
    rows = list(csv.DictReader((tmp_path / "tracking" / "metrics.csv").open()))
    assert [(r["step"], r["name"]) for r in rows] == [
        *((str(s), "holdout/auroc") for s in range(4)),
        ("3", "test/auroc"),
    ]


class Killed(BaseException):
    """SIGKILL at one point of a round: nothing after it runs."""


@pytest.mark.slow  # importing mlflow and creating its SQLite store takes 10-60 s on the shared CI cores
def test_a_run_killed_around_its_checkpoints_logs_each_round_once(tmp_path, monkeypatch):
    """The ServerRun's own order (checkpoint, then log): killed while saving round 2's checkpoint, then killed after
    round 3's checkpoint but before its log, and resumed each time: MLflow and the CSV hold each round once."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real_save = checkpoint.save

    def start(until: int, kill: str) -> None:
        run = bare_server_run(tmp_path, monkeypatch, num_rounds=4)
        run.trackers = build_trackers(load_config("logger=[csv,mlflow]"), tmp_path)
        if checkpoint.exists(tmp_path):
            run.resume(checkpoint.load(tmp_path))
        killed = {"save": lambda: monkeypatch.setattr(checkpoint, "save", _kill), "log": lambda: _kill_log(run)}
        for r in range(until - run.offset + 1):  # the strategy counts from 0 again after a resume
            if r + run.offset == until and kill:
                killed[kill]()
            run.evaluate(r, ArrayRecord({"w": torch.full((2,), 0.1 * (r + run.offset))}))
        run.trackers.finish(until, {"auroc": 0.77})

    with pytest.raises(Killed):
        start(2, "save")  # rounds 0, 1 logged; round 2 scored, its checkpoint never written
    monkeypatch.setattr(checkpoint, "save", real_save)
    with pytest.raises(Killed):
        start(3, "log")  # round 2 again; round 3 checkpointed, never logged
    start(4, "")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("fedmemes").experiment_id])
    expected = [(step, pytest.approx(0.1 * step)) for step in range(5)]  # the score is the round's weight
    history = client.get_metric_history(mlflow_run.info.run_id, "holdout/auroc")
    assert sorted((m.step, m.value) for m in history) == expected  # round 2 not twice, round 3 not missing
    rows = list(csv.DictReader((tmp_path / "tracking" / "metrics.csv").open()))
    assert [(int(r["step"]), float(r["value"])) for r in rows if r["name"] == "holdout/auroc"] == expected


def _kill(*_: object) -> None:
    raise Killed


def _kill_log(run: object) -> None:
    trackers = run.trackers  # type: ignore[attr-defined]
    real = trackers.log_metrics
    trackers.log_metrics = lambda step, metrics: real(step, metrics) if step == 0 else _kill()


@pytest.mark.slow  # importing mlflow and creating its SQLite store takes 10-60 s on the shared CI cores
def test_mlflow_logger_of_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = build_trackers(load_config("logger=mlflow"), tmp_path)
    first.log_metrics(1, {"holdout/auroc": 0.6})  # killed here: no finish
    resumed = build_trackers(load_config(f"logger=mlflow resume={tmp_path}"), tmp_path)  # a changed param is kept
    resumed.log_metrics(2, {"holdout/auroc": 0.7})
    resumed.finish(2, {"auroc": 0.77})
    assert resumed.trackers, "the resumed MLflow tracker was switched off"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedmemes").experiment_id])
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "holdout/auroc")] == [
        (1, 0.6),
        (2, 0.7),
    ]
    assert run.info.status == "FINISHED" and run.data.params["resume"] == "None"
