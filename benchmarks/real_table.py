"""Federated vs centralized test AUROC / macro-F1 of every fusion variant x image encoder on a real meme set.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/real_table.py --root /abs/harmeme --dataset harmeme \
        [--seeds 3] [--variants early_fusion text_only] [--encoders efficientnet_lite0] [--rounds 4] \
        [--overrides "lr=3e-4 optimizer=adamw"] [--server-lr 1.0] [--json out.json]

Federated: 4 clients, Dirichlet(alpha=0.5) label skew, FedAvg weighted by example counts, every
client every round, the clients' seeds and data exactly as `fedmemes simulate` builds them
(`node_datasets.client_data`, `engine.train` with seed random_seed + 1000 * round + partition), run
in one process without Ray so a whole table fits on 2 cores. The best round by hold-out (val)
AUROC is scored on the test split, as the ServerApp does. Centralized: the same loop with one
client holding every training meme (num_clients=1). Frozen encoders (MiniLM, EfficientNet-Lite0)
are cached per node, so after the first run a frozen run costs what the heads cost; with
experiment=harmeme MiniLM's last layers train, and each pass over the captions runs them.
Prints mean +- std over seeds; `--json` also keeps every run's per-round hold-out curve.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from hydra.utils import instantiate

from fedmemes import engine
from fedmemes.config import build_model, load_config
from fedmemes.node_datasets import client_data, server_data

VARIANTS = ("early_fusion", "cross_attention", "feature_interaction", "late_fusion", "text_only", "image_only")
ENCODERS = {
    "small_cnn": "model/image_encoder=small_cnn image_size=64",
    "efficientnet_lite0": "model/image_encoder=efficientnet_lite0 image_size={size}",
}


def run(overrides: str, num_clients: int, server_lr: float = 1.0) -> dict:
    """Run FedAvg in process; return test metrics of the best hold-out round and the per-round curve."""
    cfg = load_config(overrides)
    torch.manual_seed(cfg.random_seed)
    clients = [client_data(overrides, pid, num_clients) for pid in range(num_clients)]
    val, test = server_data(overrides)
    model, device = build_model(cfg), torch.device("cpu")
    optimizer = instantiate(cfg.optimizer)
    current = engine.trainable_state(model)
    curve, best = [], (-1.0, 0, current)
    for rnd in range(1, cfg.num_rounds + 1):
        states, weights = [], []
        for pid, data in enumerate(clients):
            model.load_state_dict(current)
            engine.train(
                model,
                data.train.dataset(),
                cfg.num_epochs,
                cfg.lr,
                cfg.batch_size,
                device,
                seed=cfg.random_seed + 1000 * rnd + pid,
                optimizer=optimizer,
                max_steps=cfg.local_steps,
            )
            states.append(engine.trainable_state(model))
            weights.append(len(data.train))
        total = sum(weights)
        mean = {k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True)) for k in current}
        current = {k: current[k] + server_lr * (mean[k] - current[k]) for k in current}  # server_lr 1 = FedAvg
        model.load_state_dict(current)
        scores = engine.evaluate(model, val.dataset(), cfg.batch_size, device)
        curve.append({"round": rnd, "auroc": scores["auroc"], "loss": scores["loss"], "f1_macro": scores["f1_macro"]})
        if scores["auroc"] > best[0]:
            best = (scores["auroc"], rnd, {k: v.clone() for k, v in current.items()})
    model.load_state_dict(best[2])
    # As the server does (server_app.finish): the decision threshold is picked on the hold-out, never on test.
    threshold = engine.pick_threshold(*engine.predict(model, val.dataset(), cfg.batch_size, device)[:2])
    scores = engine.threshold_metrics(*engine.predict(model, test.dataset(), cfg.batch_size, device), threshold)
    return {
        "test_auroc": scores["auroc"],
        "test_f1": scores["f1_macro"],
        "test_f1_at_0.5": scores["f1_macro_at_0.5"],
        "best_round": best[1],
        "curve": curve,
    }


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def main() -> None:
    """Run the requested rows and print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", choices=("harmeme", "hateful_memes"), default="harmeme")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--efficientnet-size", type=int, default=160)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's num_rounds")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--no-central", action="store_true", help="federated columns only")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for every run (the recipe)")
    parser.add_argument("--json", default=None, help="write every run (with its hold-out curve) here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared cores: one thread, like each simulated client
    base = f"dataset={args.dataset} dataset.root={args.root} dataset.on_error=skip {args.overrides}"
    if args.rounds:
        base += f" num_rounds={args.rounds}"
    rows, runs = [], []
    for variant in args.variants:
        encoders = [None] if variant == "text_only" else args.encoders
        for encoder in encoders:
            enc = "" if encoder is None else ENCODERS[encoder].format(size=args.efficientnet_size)
            fed, cen = [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                common = f"model={variant} {enc} {base} random_seed={seed}"
                started = time.monotonic()
                f = run(
                    f"{common} num_clients={args.clients} partition=dirichlet partition.alpha={args.alpha}",
                    args.clients,
                    args.server_lr,
                )
                c = None if args.no_central else run(f"{common} num_clients=1 partition=iid", 1)
                fed.append(f)
                cen.append(c)
                runs.append({"variant": variant, "encoder": encoder, "seed": seed, "federated": f, "central": c})
                print(
                    f"  {variant}/{encoder} seed {seed}: fed AUROC {f['test_auroc']:.3f} F1 {f['test_f1']:.3f} "
                    f"(best round {f['best_round']}, hold-out AUROC/round "
                    f"{[round(r['auroc'], 3) for r in f['curve']]}, loss {[round(r['loss'], 3) for r in f['curve']]})"
                    + ("" if c is None else f" | central {c['test_auroc']:.3f} (best epoch {c['best_round']})")
                    + f" [{time.monotonic() - started:.0f}s]",
                    flush=True,
                )
            rows.append((variant, encoder or "-", fed, cen))
            if args.json:
                with open(args.json, "w") as out:
                    json.dump({"args": vars(args), "runs": runs}, out, indent=1)
    print(
        f"\n{args.dataset}, {args.seeds} seed(s) from {args.first_seed}, {args.clients} clients Dir({args.alpha}), "
        f"overrides: {args.overrides or '(defaults)'}, server lr {args.server_lr}; test split, mean ± std"
    )
    print(
        "| model | image encoder | federated AUROC | federated macro-F1 (hold-out threshold) | macro-F1 at 0.5 "
        "| centralized AUROC | fed − central |"
    )
    print("|---|---|---|---|---|---|---|")
    for variant, encoder, fed, cen in rows:
        fa = [r["test_auroc"] for r in fed]
        central = "n/a" if cen[0] is None else _ms([r["test_auroc"] for r in cen])
        diff = "n/a" if cen[0] is None else _ms([a - r["test_auroc"] for a, r in zip(fa, cen, strict=True)])
        f1s = _ms([r["test_f1"] for r in fed]), _ms([r["test_f1_at_0.5"] for r in fed])
        print(f"| {variant} | {encoder} | {_ms(fa)} | {f1s[0]} | {f1s[1]} | {central} | {diff} |")


if __name__ == "__main__":
    main()
