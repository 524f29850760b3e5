"""Shared by the checkpoint and crash-safety tests: a ServerRun without data or Flower, whose scores are known."""

import secrets
import time
from pathlib import Path

import pytest
import torch
from flwr.serverapp.strategy import FedAvg
from omegaconf import OmegaConf

from fedmemes.bookkeeping.history import RunHistory
from fedmemes.federation import engine
from fedmemes.federation.server_run import ServerRun
from fedmemes.tracking import build_trackers


def bare_server_run(folder: Path, monkeypatch: pytest.MonkeyPatch, num_rounds: int) -> ServerRun:
    """A ServerRun without data: the hold-out AUROC is the model's mean weight, so each round's score is known."""
    monkeypatch.setattr(
        engine,
        "evaluate",
        lambda model, *_: {"auroc": float(model.w.detach().mean()), "accuracy": 0.5, "loss": 1.0, "n": 4},
    )
    run = ServerRun.__new__(ServerRun)
    run.cfg = OmegaConf.create({"num_rounds": num_rounds, "batch_size": 2, "server": {}})
    run.device, run.val = torch.device("cpu"), type("Val", (), {"dataset": lambda self: None})()
    run.amp, run.partitions, run.train_metrics, run.trackers = None, [], {}, build_trackers(run.cfg, folder)
    run.members = {}  # per-member AUROCs: none reported
    run.model = torch.nn.Module()
    run.model.w = torch.nn.Parameter(torch.zeros(2))
    run.history, run.best_state = RunHistory(folder), {"w": torch.zeros(2)}
    run.started, run.trained, run.replies, run.strategy, run.offset = time.monotonic(), 2, {}, FedAvg(), 0
    run.run_key = secrets.token_hex(8)  # as ServerRun draws it: the clients' state folder
    return run
