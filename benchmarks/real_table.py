"""Federated vs centralized test AUROC / macro-F1 of every fusion variant x image encoder on a real meme set.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/real_table.py --root /abs/harmeme --dataset harmeme \
        [--seeds 3] [--variants early_fusion text_only] [--encoders efficientnet_lite0] [--rounds 4] \
        [--clients 4] [--alpha 0.5] [--resplit K [--first-split 1] [--with-original]] [--caption-noise RATE] \
        [--overrides "lr=3e-4 optimizer=adamw"] [--server-lr 1.0] [--work DIR] [--json out.json]

Every run is the real ServerApp driving in-process ClientApps (`fedmemes.federation.testing.run_in_process`:
no Ray, the clients one after another on one torch thread, so a whole table fits on 2 cores), and
each reads the run's metrics.json: whatever the server does (best round by hold-out AUROC, the
decision threshold picked on the hold-out, early stopping, recipe selection) is what the table
measures. Federated: --clients clients, Dirichlet(--alpha) label skew, the configured strategy
(FedAvg unless --overrides says otherwise; --server-lr X runs FedAvgM without momentum at server
learning rate X). Centralized: one client holding every training meme (num_clients=1 partition=iid).
--resplit K re-draws train/dev/test K times (seeds 1..K: same sizes, stratified by label, images
linked; `fedmemes.data.resplit`) and runs every row on each; the original split joins with
--with-original. --caption-noise RATE rewrites every caption of those folders (a linked copy of the
original for split 0) with seeded romanised-spelling noise: characters altered at RATE, words
dropped at RATE/2, the same noise for a meme in every split. Prints mean ± std over (splits x
seeds); every run directory stays under --work; `--json` also keeps every run's hold-out curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedmemes.data.resplit import noisy_captions, resplit
from fedmemes.federation.testing import run_in_process

VARIANTS = ("early_fusion", "cross_attention", "feature_interaction", "late_fusion", "text_only", "image_only")
ENCODERS = {
    "small_cnn": "model/image_encoder=small_cnn image_size=64",
    "efficientnet_lite0": "model/image_encoder=efficientnet_lite0 image_size={size}",
}
NOISE_SEED = 0  # one noise draw for all splits: a meme's caption reads the same wherever it lands


def run(overrides: str, num_clients: int, run_dir: Path) -> dict[str, Any]:
    """Run the ServerApp with in-process ClientApps; return its test scores, best round and hold-out curve."""
    metrics = run_in_process(f"{overrides} overwrite=true", run_dir, num_clients)  # run_dir is ours alone
    test = metrics["test"]
    return {
        "test_auroc": test["auroc"],
        "test_f1": test["f1_macro"],
        "test_f1_at_0.5": test["f1_macro_at_0.5"],
        "test_f1_at_dev": test["f1_macro_at_dev_threshold"],
        "best_round": metrics["best_round"],
        "recipe": (metrics.get("recipes") or {}).get("chosen"),
        "curve": [
            {k: r.get(k) for k in ("round", "auroc", "loss", "f1_macro")} for r in metrics["rounds"] if "auroc" in r
        ],
        "run_dir": str(run_dir),
    }


def folders(args: argparse.Namespace, work: Path) -> dict[int, tuple[Path, dict[str, Any]]]:
    """Return the data folder of every split k (0 = the original) with its split sizes and positive rates."""
    first = args.first_split
    ks = ([0] if args.with_original or not args.resplit else []) + list(range(first, first + args.resplit))
    out: dict[int, tuple[Path, dict[str, Any]]] = {}
    for k in ks:
        if k == 0 and not args.caption_noise:
            out[k] = Path(args.root).absolute(), {}
            continue
        # k = 0 with noise: a linked copy (seed None keeps the splits), never a write into the source
        dest = work / "data" / f"split{k}"
        stats: dict[str, Any] = dict(resplit(args.root, dest, args.dataset, seed=k or None))
        if args.caption_noise:
            stats["captions_changed"] = noisy_captions(dest, args.dataset, args.caption_noise, NOISE_SEED)
        out[k] = dest, stats
        print(f"split {k}: {dest} {json.dumps(stats)}", flush=True)
    return out


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.3f}"


def _curve(r: dict[str, Any], key: str) -> list[float]:
    return [round(c[key], 3) for c in r["curve"] if c.get(key) is not None]


def parse() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", required=True, help="the data folder, in the layout --dataset reads")
    parser.add_argument("--dataset", choices=("harmeme", "hateful_memes"), default="harmeme")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--efficientnet-size", type=int, default=160)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--alpha", "--partition-alpha", dest="alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=None, help="default: the config's num_rounds")
    parser.add_argument("--server-lr", type=float, default=None, help="federated: FedAvgM, momentum 0, this server lr")
    parser.add_argument("--no-central", action="store_true", help="federated columns only")
    parser.add_argument("--resplit", type=int, default=0, metavar="K", help="run on K re-drawn splits (seeds 1..K)")
    parser.add_argument("--first-split", type=int, default=1, help="with --resplit: seed of the first re-split")
    parser.add_argument("--with-original", action="store_true", help="with --resplit: the original split too")
    parser.add_argument("--caption-noise", type=float, default=0.0, metavar="RATE", help="noisy captions, e.g. 0.1")
    parser.add_argument("--overrides", default="", help="extra Hydra overrides for every run (the recipe)")
    parser.add_argument("--work", default=None, help="data copies and run dirs (default: a new temp dir)")
    parser.add_argument("--json", default=None, help="write every run (with its hold-out curve) here")
    return parser.parse_args()


def main() -> None:
    """Run the requested rows on every split and print the markdown table."""
    args = parse()
    torch.set_num_threads(1)  # shared cores: one thread, like each simulated client
    logging.getLogger("flwr").setLevel(logging.WARNING)  # Flower's per-round log would bury the per-run lines
    work = Path(args.work or tempfile.mkdtemp(prefix="real_table-")).absolute()
    print(f"work dir: {work}", flush=True)
    splits = folders(args, work)
    base = f"dataset={args.dataset} dataset.on_error=skip {args.overrides}"
    if args.rounds:
        base += f" num_rounds={args.rounds}"
    fed_extra = f"num_clients={args.clients} partition=dirichlet partition.alpha={args.alpha}"
    if args.server_lr is not None:  # after --overrides, so it wins over a strategy set there
        fed_extra += " strategy=fedavgm server.strategy.server_momentum=0"
        fed_extra += f" server.strategy.server_learning_rate={args.server_lr}"
    rows, runs = [], []
    for variant in args.variants:
        encoders = [None] if variant == "text_only" else args.encoders
        for encoder in encoders:
            enc = "" if encoder is None else ENCODERS[encoder].format(size=args.efficientnet_size)
            fed, cen = [], []
            for k, (root, _) in splits.items():
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    common = f"model={variant} {enc} {base} dataset.root={root} random_seed={seed}"
                    tag = f"split{k}-{variant}-{encoder or 'none'}-seed{seed}"
                    started = time.monotonic()
                    f = run(f"{common} {fed_extra}", args.clients, work / "runs" / f"{tag}-fed")
                    c = None
                    if not args.no_central:
                        c = run(f"{common} num_clients=1 partition=iid", 1, work / "runs" / f"{tag}-central")
                    fed.append(f)
                    cen.append(c)
                    runs.append(
                        {"variant": variant, "encoder": encoder, "split": k, "seed": seed, "federated": f, "central": c}
                    )
                    print(
                        f"  {variant}/{encoder} split {k} seed {seed}: fed AUROC {f['test_auroc']:.3f} "
                        f"F1 {f['test_f1']:.3f} (at 0.5 {f['test_f1_at_0.5']:.3f}; recipe {f['recipe']}; "
                        f"best round {f['best_round']}, "
                        f"hold-out AUROC/round {_curve(f, 'auroc')}, loss {_curve(f, 'loss')})"
                        + ("" if c is None else f" | central {c['test_auroc']:.3f} (best epoch {c['best_round']})")
                        + f" [{time.monotonic() - started:.0f}s]",
                        flush=True,
                    )
            rows.append((variant, encoder or "-", fed, cen))
            if args.json:
                with open(args.json, "w") as out:
                    stats = {k: s for k, (_, s) in splits.items()}
                    json.dump({"args": vars(args), "work": str(work), "splits": stats, "runs": runs}, out, indent=1)
    where = "the original split" if list(splits) == [0] else f"splits {list(splits)} (0 = original)"
    noise = f", caption noise {args.caption_noise}" if args.caption_noise else ""
    server = "" if args.server_lr is None else f", FedAvgM server lr {args.server_lr}"
    print(
        f"\n{args.dataset}, {where}{noise}, {args.seeds} seed(s) from {args.first_seed}, {args.clients} clients "
        f"Dir({args.alpha}){server}, overrides: {args.overrides or '(defaults)'}; test split, mean ± std over "
        f"{len(splits) * args.seeds} runs (splits x seeds)"
    )
    print(
        "| model | image encoder | federated AUROC | federated macro-F1 (hold-out threshold) | at the raw pick "
        "| at 0.5 | centralized AUROC | fed − central |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant, encoder, fed, cen in rows:
        fa, ca = [r["test_auroc"] for r in fed], [r["test_auroc"] for r in cen if r is not None]
        central = _ms(ca) if ca else "n/a"
        diff = _ms([a - c for a, c in zip(fa, ca, strict=True)]) if ca else "n/a"
        f1s = [_ms([r[key] for r in fed]) for key in ("test_f1", "test_f1_at_dev", "test_f1_at_0.5")]
        print(f"| {variant} | {encoder} | {_ms(fa)} | {' | '.join(f1s)} | {central} | {diff} |")


if __name__ == "__main__":
    main()
