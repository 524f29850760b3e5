"""Test AUROC under label skew per strategy, beside the centralized and IID references, in one process.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/skew_table.py [--alphas 1.0 0.3 0.1] [--seeds 42 43 44]
        [--rounds 30] [--only fedavg scaffold ...] [--overrides "dataset=hateful_memes dataset.root=/abs/dir"]

6 clients, Dirichlet label skew at each alpha, every strategy below; each cell is the test AUROC
of the best round's model (the server picks it on its hold-out), mean ± std over the seeds
(`random_seed` seeds the data, the partition and the initial model). "rounds to 0.9c" is the first
round whose hold-out AUROC reaches 0.9 x the centralized reference's best hold-out AUROC (mean
over the seeds that reach it; n/3 says how many did). References: `centralized` is one client
holding all the training memes (partition=iid, num_clients=1); `iid` is 6 IID clients with FedAvg.
On the synthetic set (the default) the label depends on the caption-image pair ("held-out confounder
memes"; `--overrides dataset.source.version=1` for the pure caption XOR picture rule);
any folder in the original layout works with `--overrides "dataset=hateful_memes dataset.root=DIR"`.

Runs use the real ServerApp and ClientApp with an in-process Grid
(fedmemes.federation.testing.LocalGrid), clients one after another on one torch thread.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import fedmemes.federation.client_app
from fedmemes.federation import node_datasets
from fedmemes.federation.testing import run_in_process

# All 6 clients live in this one process (a Ray actor holds only its own few): keep every client's
# tensors cached, or the 4-slot cache rebuilds each client's data every round.
fedmemes.federation.client_app.client_data = functools.lru_cache(maxsize=32)(node_datasets.client_data.__wrapped__)

# name -> overrides. Local training: the default is one Adam epoch per round; the FedSGD regime is
# one SGD step per round. Strategies whose point is local steps (SCAFFOLD, FedDyn) take a few.
SGD1 = "local_steps=1 optimizer=sgd lr=0.1"
STRATEGIES = {
    "fedavg": "strategy=fedavg",
    "fedprox": "strategy=fedprox",
    "fedadam": "strategy=fedadam",
    "fedlc": "strategy=fedavg loss=fedlc",  # the label_skew preset until 2026-11-29
    "scaffold": "strategy=scaffold local_steps=3 optimizer=sgd lr=0.1",
    "feddyn": "strategy=feddyn local_steps=3 optimizer=sgd lr=0.1",
    "fedsgd": f"strategy=fedavg {SGD1}",
    "fedsgd60": f"strategy=fedavg {SGD1} num_rounds=60",  # one step per round needs about as many rounds as steps
    "fedavg_slr": f"strategy=fedavg_slr server.strategy.server_lr=3 {SGD1}",
    "fedadam_sgd1": f"strategy=fedadam {SGD1}",
    "label_skew": "experiment=label_skew",  # the shipped preset: FedAdam on one SGD step, loss=fedlc, its own rounds
}
# Below this alpha, 6 clients of 2,000 memes often cannot all get 10 (DirichletPartitioner's default floor).
SMALL_ALPHA = 0.2
REFERENCES = {"centralized": ("partition=iid", 1), "iid": ("partition=iid strategy=fedavg", 6)}


def _curve(metrics: dict) -> list[float]:
    # Round 0 is the initial model; a round the server did not score (server.eval_every) repeats the last score.
    curve, last = [], 0.5
    for r in metrics["rounds"][1:]:
        last = r["auroc"] if r.get("auroc") is not None else last
        curve.append(last)
    return curve


def _cell(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "-"


def _reach(curves: list[list[float]], target: float) -> str:
    hits = [next((i for i, a in enumerate(c, start=1) if a >= target), None) for c in curves]
    got = [h for h in hits if h is not None]
    return f"{statistics.mean(got):.0f} ({len(got)}/{len(hits)})" if got else f"- (0/{len(hits)})"


def _one(overrides: str, num_clients: int) -> tuple[float, list[float], float]:
    torch.set_num_threads(1)  # clients run one after another; more threads only spin on a shared 2-core box
    start = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="skew_table-"))
    metrics = run_in_process(f"{overrides} num_clients={num_clients}", run_dir, num_clients)
    return float(metrics["test"]["auroc"]), _curve(metrics), time.monotonic() - start


def measure(
    overrides: str, num_clients: int, seeds: list[int], jobs: int = 1
) -> tuple[list[float], list[list[float]], float]:
    """Run one configuration once per seed (`jobs` at a time); return test AUROCs, hold-out curves and mean seconds."""
    args = [(f"{overrides} random_seed={seed}", num_clients) for seed in seeds]
    if jobs > 1:
        with ProcessPoolExecutor(min(jobs, len(args)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_one, *zip(*args, strict=True)))
    else:
        results = [_one(*a) for a in args]
    return [r[0] for r in results], [r[1] for r in results], statistics.mean(r[2] for r in results)


def main() -> None:
    """Print the table: references first, then each alpha x strategy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", type=float, nargs="*", default=[1.0, 0.3, 0.1])
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44])
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds per run (default: experiment=skew_benchmark's 30; the label_skew preset keeps its own)",
    )
    parser.add_argument("--only", nargs="*", default=list(STRATEGIES), help=f"strategies, of {list(STRATEGIES)}")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for every run")
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (one torch thread each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds = f"num_rounds={args.rounds}" if args.rounds else ""
    # conf/experiment/skew_benchmark.yaml
    base = " ".join(f"experiment=skew_benchmark {rounds} {args.overrides}".split())
    print(
        f"seeds {args.seeds} | {base}\n"
        "| alpha | strategy | test AUROC (mean ± std) | vs centralized | rounds to 0.9c hold-out | s/run |\n"
        "|---|---|---|---|---|---|",
        flush=True,
    )
    target, central = 0.0, None
    if not args.no_references:
        for name, (extra, clients) in REFERENCES.items():
            tests, curves, secs = measure(f"{base} {extra}", clients, args.seeds, args.jobs)
            if name == "centralized":
                central = statistics.mean(tests)
                target = 0.9 * statistics.mean(max(c) for c in curves)
            delta = f"{statistics.mean(tests) - central:+.3f}" if central is not None else ""
            print(
                f"| - | {name} | {_cell(tests)} | {delta} | {_reach(curves, target) if target else '-'} | {secs:.0f} |",
                flush=True,
            )
    for alpha in args.alphas:
        for name in args.only:
            preset = STRATEGIES[name].startswith("experiment=")
            head = args.overrides if preset else base
            over = f"{head} {STRATEGIES[name]} num_clients=6 partition.alpha={alpha}"
            if alpha < SMALL_ALPHA:  # clients of a few memes are the point here; flwr's floor of 10 cannot be met
                over += " partition.min_partition_size=1"
            tests, curves, secs = measure(" ".join(over.split()), 6, args.seeds, args.jobs)
            delta = f"{statistics.mean(tests) - central:+.3f}" if central is not None else ""
            print(
                f"| {alpha} | {name} | {_cell(tests)} | {delta} | {_reach(curves, target) if target else '-'} | "
                f"{secs:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
