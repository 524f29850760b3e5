"""Test AUROC per aggregation strategy, and under faulty clients, measured side by side in one process.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/strategy_table.py [--rounds 5] [--part strategies|faults|all]

strategies: 6 clients, Dirichlet alpha 0.1, 2 of the 6 clients without images
(`partition.text_only_clients=2`); fedavg, fedprox, fedadam, performance_weighted, modality_aware.
faults: 4 clients; one client sends NaN weights every round (FedAvg), or its update scaled by 100
(FedAvg, FedMedian, Krum), each beside the clean run of the same strategy.

Runs use the real ServerApp and ClientApp with Flower's transport replaced by an in-process Grid
(tests/test_strategies_run.py: LocalGrid), clients one after another on one torch thread; the
faulty clients are wrappers around the ClientApp defined here, not product code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from test_strategies_run import LocalGrid  # noqa: E402

from fedmemes.client_app import app as client_app  # noqa: E402
from fedmemes.server_app import app as server_app  # noqa: E402

Client = Callable[[Message, Context], Message]


def faulty(bad_partition: int, corrupt: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Client:
    """Wrap the ClientApp: partition `bad_partition` replies corrupt(global, local) for every tensor."""

    def call(msg: Message, context: Context) -> Message:
        out = client_app(msg, context)
        if int(context.node_config["partition-id"]) != bad_partition or msg.metadata.message_type != "train":
            return out
        sent, local = msg.content["arrays"], out.content["arrays"]
        out.content["arrays"] = ArrayRecord({k: Array(corrupt(sent[k].numpy(), local[k].numpy())) for k in local.keys()})
        return out

    return call


def nan_weights(sent: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Every value NaN."""
    return np.full_like(local, np.nan)


def scaled_by_100(sent: np.ndarray, local: np.ndarray) -> np.ndarray:
    """The client's update (local - global) multiplied by 100."""
    return (sent + 100.0 * (local - sent)).astype(local.dtype)


def run(overrides: str, num_clients: int, client: Client = client_app) -> dict:
    """Run one federation in-process and return its metrics.json."""
    run_dir = Path(tempfile.mkdtemp(prefix="strategy_table-"))
    overrides = f"{overrides} num_clients={num_clients} run_dir={run_dir}"
    os.environ["FEDMEMES_OVERRIDES"] = overrides
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # what Flower's runtime sets
    torch.manual_seed(0)  # the server's initial model is not seeded: give every compared run the same start
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": overrides})
    server_app(LocalGrid(num_clients, client), context)
    return json.loads((run_dir / "metrics.json").read_text())


def row(name: str, metrics: dict, seconds: float, clean: float | None = None) -> str:
    """One table row: test AUROC of the best round's model, last hold-out AUROC, dropped replies."""
    test, last = metrics["test"]["auroc"], metrics["rounds"][-1]
    dropped = sum(r.get("dropped_replies", 0) for r in metrics["rounds"])
    delta = f"{test - clean:+.3f}" if clean is not None else ""
    return f"| {name:<34} | {test:.3f} | {delta:>6} | {last['auroc'] or float('nan'):.3f} | {dropped:>3} | {seconds:>5.0f} |"


HEADER = ("| run                                | test AUROC | vs clean | last hold-out AUROC | dropped | s |\n"
          "|---|---|---|---|---|---|")


def strategies(base: str) -> None:
    """The strategy table: 6 clients, alpha 0.1, 2 without images."""
    print(f"\n6 clients, Dirichlet alpha 0.1, 2 text-only clients | {base}\n{HEADER}")
    for name in ("fedavg", "fedprox", "fedadam", "performance_weighted", "modality_aware"):
        start = time.monotonic()
        # random_seed=1: a seed whose Dirichlet(0.1) draw gives all 6 clients >= 10 memes (42 does not)
        metrics = run(f"{base} random_seed=1 partition.alpha=0.1 partition.text_only_clients=2 strategy={name}", 6)
        print(row(name, metrics, time.monotonic() - start), flush=True)


def faults(base: str) -> None:
    """Fault runs: 4 clients, client 1 faulty."""
    print(f"\n4 clients, Dirichlet alpha 0.5, client 1 faulty | {base}\n{HEADER}")
    cases = [("fedavg", "NaN weights", nan_weights), ("fedavg", "update x100", scaled_by_100),
             ("fedmedian", "update x100", scaled_by_100), ("krum", "update x100", scaled_by_100)]
    clean: dict[str, float] = {}
    for strategy, fault, corrupt in cases:
        if strategy not in clean:
            start = time.monotonic()
            metrics = run(f"{base} strategy={strategy}", 4)
            clean[strategy] = metrics["test"]["auroc"]
            print(row(f"{strategy}, clean", metrics, time.monotonic() - start), flush=True)
        start = time.monotonic()
        metrics = run(f"{base} strategy={strategy}", 4, faulty(1, corrupt))
        print(row(f"{strategy}, {fault}", metrics, time.monotonic() - start, clean[strategy]), flush=True)
    print(f"(fedavg clean AUROC for reference: {clean['fedavg']:.3f})")


def main() -> None:
    """Print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--part", choices=("strategies", "faults", "all"), default="all")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for every run")
    args = parser.parse_args()
    torch.set_num_threads(1)  # clients run one after another; more threads only spin on a shared 2-core box
    base = f"num_rounds={args.rounds} {args.overrides}".strip()
    if args.part in ("strategies", "all"):
        strategies(base)
    if args.part in ("faults", "all"):
        faults(base)


if __name__ == "__main__":
    main()
