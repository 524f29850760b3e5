"""Test AUROC of every fusion variant on the synthetic memes, federated and central, in one table.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/fusion_table.py [--rounds 6] [--image-size 64]
        [--overrides "dataset=hateful_memes dataset.root=/abs/hateful_memes"]

Federated: `fedmemes simulate` with 4 clients, Dirichlet(alpha=0.5) label skew, FedAvg, one local
epoch per round; the server scores the best round's model (by hold-out AUROC) on test_seen.
Central: one party holding all of the clients' training memes trains the same model with the
engine for as many epochs as there are rounds, best epoch by the same hold-out, same test set.
The synthetic label is caption topic XOR image concept: each modality alone is at chance.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from fedmemes.config import build_model, load_config
from fedmemes.data.features import build_tensors
from fedmemes.federation import engine
from fedmemes.federation.node_datasets import holdout, server_data

VARIANTS = ("early_fusion", "cross_attention", "feature_interaction", "late_fusion", "text_only", "image_only")


def federated(overrides: str, run_dir: Path) -> float:
    """Run `fedmemes simulate` and return its test AUROC."""
    cmd = [str(Path(sys.executable).parent / "fedmemes"), "simulate", *overrides.split(), f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return float(json.loads((run_dir / "metrics.json").read_text())["test"]["auroc"])


def central(overrides: str) -> float:
    """Train on the whole pool with the engine; return the test AUROC of the best epoch on the hold-out."""
    cfg = load_config(overrides)
    # One thread, like each simulated client: on shared, busy cores, two spinning threads run far slower.
    torch.set_num_threads(1)
    torch.manual_seed(cfg.random_seed)
    pool = build_tensors(holdout(cfg).pool, instantiate(cfg.model.text_encoder), cfg.image_size, cfg.cache_dir)
    val, test = server_data(overrides)
    model, device = build_model(cfg), engine.pick_device(cfg.device)
    optimizer = instantiate(cfg.optimizer)  # a factory: each epoch starts a fresh optimizer, like a client's round
    best, best_state = -1.0, None
    for epoch in range(cfg.num_rounds):
        engine.train(
            model, pool.dataset(), 1, cfg.lr, cfg.batch_size, device, seed=cfg.random_seed + epoch, optimizer=optimizer
        )
        auroc = engine.evaluate(model, val.dataset(), cfg.batch_size, device)["auroc"]
        if auroc > best:
            best, best_state = auroc, copy.deepcopy(engine.trainable_state(model))
    model.load_state_dict(best_state)
    return engine.evaluate(model, test.dataset(), cfg.batch_size, device)["auroc"]


def main() -> None:
    """Run every variant both ways and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=64, help="pixels the CNN sees (64: the default config)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument(
        "--overrides",
        default="",
        help="extra overrides for every run, e.g. the real data: "
        "'dataset=hateful_memes dataset.root=/abs/hateful_memes'",
    )
    args = parser.parse_args()
    common = f"num_rounds={args.rounds} image_size={args.image_size} {args.overrides}".strip()
    fed_args = "num_clients=4 partition=dirichlet partition.alpha=0.5"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            started = time.monotonic()
            fed = federated(f"model={name} {common} {fed_args}", Path(tmp) / name)
            mid = time.monotonic()
            cen = central(f"model={name} {common}")
            rows.append((name, fed, cen, mid - started, time.monotonic() - mid))
            print(
                f"  {name}: federated {fed:.3f} ({mid - started:.0f}s), central {cen:.3f} "
                f"({time.monotonic() - mid:.0f}s)",
                flush=True,
            )
    print(
        f"\n{args.overrides or 'synthetic memes (label = caption topic XOR image concept)'}, "
        f"{args.rounds} rounds/epochs, {args.image_size}px, test_seen AUROC"
    )
    print(f"{'model':<22}{'federated (4 clients, Dir 0.5)':>32}{'central (1 party)':>20}{'seconds fed/cen':>18}")
    for name, fed, cen, t_fed, t_cen in rows:
        print(f"{name:<22}{fed:>32.3f}{cen:>20.3f}{t_fed:>12.0f}/{t_cen:<5.0f}")


if __name__ == "__main__":
    main()
