"""Per-member AUROC of each personalisation method beside the global model's, and what each client sends per round.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/personal_table.py [--seeds 1 2 3] [--rounds 4]
        [--only none local_head "ditto, mix=1" ...] [--overrides "dataset=harmeme"]

6 clients, Dirichlet(0.3) label skew, FedAvg; every client keeps back `local_val_share` of its own
memes and scores there, at the last round, the global model it received and its own model
(personalization.eval_every). Each cell is over clients (mean, worst decile = 10th percentile), then
mean ± std over the seeds. "global" is personalization=none: the federation's one model. A client
whose kept-back share holds one class has no AUROC and is left out (n = clients scored, summed over
seeds). "bytes/round" is what the 6 clients' train replies carry per round (float32 shared tensors).

Runs use the real ServerApp and ClientApp with an in-process Grid (fedmemes.federation.testing.LocalGrid,
no Ray), clients one after another in this process.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import fedmemes.federation.client_app
from fedmemes.config import build_model, build_personalization, load_config
from fedmemes.federation import node_datasets
from fedmemes.federation.testing import run_in_process

# All 6 clients live in this one process: keep every client's tensors cached (the default keeps 4).
fedmemes.federation.client_app.client_data = functools.lru_cache(maxsize=32)(node_datasets.client_data.__wrapped__)

# row name -> its overrides; "ditto, mix=1" is the paper's Ditto (its personal model alone, not mixed with the global)
METHODS = {
    "none": "personalization=none",
    "fedbn": "personalization=fedbn",
    "local_head": "personalization=local_head",
    "finetune": "personalization=finetune",
    "ditto": "personalization=ditto",
    "ditto, mix=1": "personalization=ditto personalization.mix=1",
}
BASE = "num_clients=6 partition=dirichlet partition.alpha=0.3 strategy=fedavg personalization.eval_every=1000"


def _bytes_per_round(overrides: str, clients: int) -> int:
    """Bytes of float32 tensors the clients' train replies carry per round (the shared keys only)."""
    cfg = load_config(overrides)
    model = build_model(cfg)
    local = set(build_personalization(cfg).local_keys(model))
    return clients * sum(4 * t.numel() for k, t in model.state_dict().items() if k not in local)


def _fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    """Run every method on every seed; print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--overrides", default="local_val_share=0.2", help="more Hydra overrides for every run")
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="personal-table-") as tmp:
        for seed in args.seeds:  # seed by seed: a run cut short still has every method on its first seeds
            for method in args.only:
                cells = rows.setdefault(method, {"mean": [], "decile": [], "global": [], "n": []})
                overrides = f"{BASE} {args.overrides} {METHODS[method]} num_rounds={args.rounds} random_seed={seed}"
                metrics = run_in_process(overrides, Path(tmp) / f"{seed}-{args.only.index(method)}", 6)
                block = metrics["rounds"][-1].get("members") or {}
                personal, global_ = block.get("personal") or {}, block.get("global") or {}
                if personal.get("mean") is not None:
                    cells["mean"].append(personal["mean"])
                    cells["decile"].append(personal["worst_decile"])
                    cells["global"].append(global_["mean"])
                    cells["n"].append(personal["clients"])
                print(
                    f"  {method} seed {seed}: personal {personal} global {global_} ({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
    for method, cells in rows.items():
        cells["bytes"] = [_bytes_per_round(f"{BASE} {args.overrides} {METHODS[method]}", 6)]
    print(f"\n6 clients, Dirichlet 0.3, FedAvg, {args.rounds} rounds, seeds {args.seeds}, {args.overrides}")
    print("| method | own-memes AUROC, mean | worst decile | its global model, mean | clients scored | bytes/round |")
    print("|---|---|---|---|---|---|")
    for method, cells in rows.items():
        name = "global (none)" if method == "none" else method
        print(
            f"| {name} | {_fmt(cells['mean'])} | {_fmt(cells['decile'])} | {_fmt(cells['global'])} | "
            f"{int(sum(cells['n']))} | {int(cells['bytes'][0]):,} |"
        )
    print(f"({time.monotonic() - started:.0f}s)")


if __name__ == "__main__":
    main()
