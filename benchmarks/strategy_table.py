"""Test AUROC per aggregation strategy, and under faulty clients, measured side by side in one process.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/strategy_table.py [--part strategies|faults|all]

strategies: 6 clients, Dirichlet alpha 0.1, 2 of the 6 clients without images
(`partition.text_only_clients=2`); fedavg, fedprox, fedadam, performance_weighted, modality_aware.
At alpha 0.1 nearly every client holds a single label, and in the synthetic set only the pair
predicts it: a client that trains a whole local epoch just learns to answer its own label, and
FedAvg stays at chance (measured: 30 rounds of 1 Adam epoch, test AUROC 0.51-0.55). So this table
runs the FedSGD regime: one local SGD step per round (`local_steps=1 optimizer=sgd lr=0.1`), where
the average of the clients' steps is a gradient step on their union, for 100 rounds. Besides the
best round's test AUROC it prints the first round whose hold-out AUROC reaches 0.9 and the mean
hold-out AUROC over all rounds (the area under the learning curve), which tell the strategies apart
when they all end at the same AUROC.
faults: 4 IID clients, 6 rounds of one local Adam epoch; one client sends NaN weights every round
(FedAvg), or its update scaled by 100 (FedAvg, FedMedian, Krum), each beside the clean run of the
same strategy.

Runs use the real ServerApp and ClientApp with Flower's transport replaced by an in-process Grid
(fedmemes.federation.testing.LocalGrid), clients one after another on one torch thread; the
faulty clients are wrappers around the ClientApp defined here, not product code.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message

from fedmemes.federation.client_app import app as client_app
from fedmemes.federation.testing import run_in_process

Client = Callable[[Message, Context], Message]


def faulty(bad_partition: int, corrupt: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Client:
    """Wrap the ClientApp: partition `bad_partition` replies corrupt(global, local) for every tensor."""

    def call(msg: Message, context: Context) -> Message:
        out = client_app(msg, context)
        if int(context.node_config["partition-id"]) != bad_partition or msg.metadata.message_type != "train":
            return out
        sent, local = msg.content["arrays"], out.content["arrays"]
        out.content["arrays"] = ArrayRecord({k: Array(corrupt(sent[k].numpy(), local[k].numpy())) for k in local})
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
    return run_in_process(f"{overrides} num_clients={num_clients}", run_dir, num_clients, client)


def row(name: str, metrics: dict, seconds: float, clean: float | None = None) -> str:
    """One table row: test AUROC of the best round's model, hold-out AUROC curve facts, dropped replies."""
    test = metrics["test"]["auroc"]
    curve = [r["auroc"] if r["auroc"] is not None else 0.5 for r in metrics["rounds"][1:]]  # round 0: the initial model
    first_09 = next((i for i, a in enumerate(curve, start=1) if a >= 0.9), None)
    dropped = sum(r.get("dropped_replies", 0) for r in metrics["rounds"])
    delta = f"{test - clean:+.3f}" if clean is not None else ""
    return (
        f"| {name:<34} | {test:.3f} | {delta:>6} | {curve[-1]:.3f} | {first_09 or '-':>4} | "
        f"{sum(curve) / len(curve):.3f} | {dropped:>3} | {seconds:>5.0f} |"
    )


HEADER = (
    "| run | test AUROC | vs clean | last hold-out AUROC | first round >= 0.9 | mean hold-out AUROC | dropped | s |\n"
    "|---|---|---|---|---|---|---|---|"
)
STRATEGY_BASE = "experiment=fedsgd"  # conf/experiment/fedsgd.yaml: 100 one-step SGD rounds, 6 skewed clients
FAULT_BASE = "experiment=faults"  # conf/experiment/faults.yaml: 4 IID clients, 6 rounds


def strategies(extra: str) -> None:
    """The strategy table: 6 clients, alpha 0.1, 2 without images."""
    base = f"{STRATEGY_BASE} {extra}".strip()
    print(f"\n6 clients, Dirichlet alpha 0.1, 2 text-only clients | {base}\n{HEADER}")
    for name in ("fedavg", "fedprox", "fedadam", "performance_weighted", "modality_aware"):
        start = time.monotonic()
        metrics = run(f"{base} strategy={name}", 6)
        print(row(name, metrics, time.monotonic() - start), flush=True)


def faults(extra: str) -> None:
    """Fault runs: 4 clients, client 1 faulty."""
    base = f"{FAULT_BASE} {extra}".strip()
    print(f"\n4 IID clients, client 1 faulty | {base}\n{HEADER}")
    cases = [
        ("fedavg", "NaN weights", nan_weights),
        ("fedavg", "update x100", scaled_by_100),
        ("fedmedian", "update x100", scaled_by_100),
        ("krum", "update x100", scaled_by_100),
    ]
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
    parser.add_argument("--part", choices=("strategies", "faults", "all"), default="all")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for every run, e.g. num_rounds=50")
    args = parser.parse_args()
    torch.set_num_threads(1)  # clients run one after another; more threads only spin on a shared 2-core box
    if args.part in ("strategies", "all"):
        strategies(args.overrides)
    if args.part in ("faults", "all"):
        faults(args.overrides)


if __name__ == "__main__":
    main()
