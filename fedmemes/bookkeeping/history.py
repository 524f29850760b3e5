"""What a run leaves behind: per-round hold-out scores, client facts, best and final models, metrics.json."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from fedmemes.bookkeeping import private_files

METRICS_FILE = "metrics.json"


def _clean(value: Any) -> Any:
    # JSON has no NaN: write null so every reader can parse the file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


@dataclass
class RunHistory:
    """Everything the server learns during a run, written to `run_dir` after every round."""

    run_dir: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    # the split facts the operator's CLI recorded, by partition
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)
    # what each node reported, by the node id Flower gave it
    nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    best_round: int | None = None
    test: dict[str, Any] | None = None
    data_issues: dict[str, int] = field(default_factory=dict)  # bad rows per kind the source skipped
    stopped_early: int | None = None  # the round server.patience ended the run at
    recipes: dict[str, Any] | None = None  # the candidate recipes' hold-out trials and the one chosen (server.recipes)
    # a run that stopped short of a sound finish, its results saved all the same: {"code": exit code, "reason": why};
    # `fedmemes simulate`/`server` print the summary, then exit with that code (run_steps.finish_command)
    ended: dict[str, Any] | None = None

    def add_round(self, server_round: int, scores: dict[str, Any]) -> bool:
        """Record a round's hold-out scores; return True if it is the new best (highest AUROC)."""
        self.rounds.append({"round": server_round, **scores})
        if "auroc" not in scores:  # not scored this round (server.eval_every): never the best
            return False
        best = next((r for r in self.rounds if r["round"] == self.best_round), None)
        score = scores.get("auroc", math.nan)
        if best is None or (score == score and not best["auroc"] >= score):
            self.best_round = server_round
            return True
        return False

    def add_client(self, partition_id: int, facts: dict[str, Any]) -> None:
        """Remember what a client reported about its data (latest report wins, other facts stay)."""
        self.clients[partition_id] = {**self.clients.get(partition_id, {}), "partition_id": partition_id, **facts}

    def add_node(self, node_id: int, facts: dict[str, Any]) -> None:
        """Remember what a node reported in its latest reply; one node can never touch another's entry."""
        self.nodes[int(node_id)] = {**self.nodes.get(int(node_id), {}), "node_id": int(node_id), **facts}

    def state(self) -> dict[str, Any]:
        """Return what a checkpoint keeps to continue this history after a restart."""
        return {
            "rounds": list(self.rounds),
            "clients": dict(self.clients),
            "nodes": dict(self.nodes),
            "best_round": self.best_round,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpointed `state()`: its rounds are kept and never recorded again."""
        self.rounds, self.best_round = list(state["rounds"]), state["best_round"]
        self.clients.update(state["clients"])
        self.nodes.update(state.get("nodes", {}))

    def as_dict(self) -> dict[str, Any]:
        """Return the metrics.json content."""
        clean: dict[str, Any] = _clean(
            {
                "rounds": self.rounds,
                "best_round": self.best_round,
                "stopped_early": self.stopped_early,
                "ended": self.ended,
                "recipes": self.recipes,
                "test": self.test,
                "clients": [self.clients[k] for k in sorted(self.clients)],
                "nodes": [self.nodes[k] for k in sorted(self.nodes)],
                "data_issues": self.data_issues,
            }
        )
        return clean

    def write(self) -> Path:
        """Write metrics.json atomically and return its path."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return private_files.write_text(self.run_dir / METRICS_FILE, json.dumps(self.as_dict(), indent=2))

    def save_model(self, name: str, state: dict[str, torch.Tensor]) -> Path:
        """Save a state dict as `<run_dir>/<name>.safetensors` atomically (a crash mid-write keeps the previous
        file)."""
        data = save({k: v.contiguous() for k, v in state.items()})  # bytes: written 0600 like every run file
        return private_files.write_bytes(self.run_dir / f"{name}.safetensors", data)
