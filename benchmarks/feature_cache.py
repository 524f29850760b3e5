"""A training round with cached frozen caption features vs one that re-encodes the captions.

    FEDMEMES_CACHE=/tmp/fmcache .venv/bin/python benchmarks/feature_cache.py [--memes 500] [--rounds 3]

Both rounds do what a client's round does with early fusion on the same share (`--memes` synthetic
memes, about a quarter of the pool as with 4 clients): one local epoch, then its kept-back 10% scored.
"cached" reads MiniLM's vectors from the
on-disk feature cache (keyed by encoder identity + captions); "re-encode" runs MiniLM over every
caption first, as a model with the frozen encoder inside its forward pass does every round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from fedmemes.config import build_model, load_config
from fedmemes.data.features import MemeTensors, build_tensors
from fedmemes.federation import engine
from fedmemes.federation.node_datasets import holdout


def features(cfg, memes, cache: Path, reencode: bool) -> MemeTensors:
    """Tensors of `memes`; with `reencode`, the captions go through MiniLM again."""
    encoder = instantiate(cfg.model.text_encoder)
    tensors = build_tensors(memes, encoder, cfg.image_size, cache)  # images come from the cache both ways
    if reencode:
        tensors = MemeTensors(encoder.encode([m.text for m in memes]), tensors.image, tensors.label, tensors.mask)
    return tensors


def one_round(cfg, memes, cache: Path, reencode: bool) -> tuple[float, float]:
    """Return (seconds to get the text features, seconds for the whole client round).

    A round as the ClientApp does it: train one epoch on 90% of the share, score the 10% kept back.
    """
    torch.manual_seed(0)
    started = time.perf_counter()
    cut = len(memes) * 9 // 10
    train, val = features(cfg, memes[:cut], cache, reencode), features(cfg, memes[cut:], cache, reencode)
    text_seconds = time.perf_counter() - started
    model, device = build_model(cfg), torch.device("cpu")
    engine.train(model, train.dataset(), 1, cfg.lr, cfg.batch_size, device)
    engine.evaluate(model, val.dataset(), cfg.batch_size, device)
    return text_seconds, time.perf_counter() - started


def main() -> None:
    """Time both kinds of round side by side and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.image_encoder.width=32")
    args = parser.parse_args()
    torch.set_num_threads(1)  # like one simulated client (num_cpus=1); also steadier on shared cores
    cfg = load_config(" ".join([f"image_size={args.image_size}", *args.overrides]))
    memes = holdout(cfg).pool[: args.memes]
    with tempfile.TemporaryDirectory() as tmp:
        one_round(cfg, memes, Path(tmp), reencode=False)  # warm up: fill the cache, load MiniLM once
        times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for _ in range(args.rounds):  # interleaved, so load from other processes hits both alike
            for reencode in (False, True):
                times[reencode].append(one_round(cfg, memes, Path(tmp), reencode))
    med = {k: (statistics.median(f for f, _ in v), statistics.median(t for _, t in v)) for k, v in times.items()}
    print(f"one round of early_fusion on {len(memes)} memes ({args.image_size}px), median of {args.rounds}")
    print(f"{'round':<12}{'text features s':>16}{'whole round s':>15}")
    for label, key in (("cached", False), ("re-encode", True)):
        print(f"{label:<12}{med[key][0]:>16.2f}{med[key][1]:>15.2f}")
    print(
        f"speed-up of the cached round: {med[True][1] / med[False][1]:.1f}x "
        f"(text features alone: {med[True][0] / max(med[False][0], 1e-9):.0f}x)"
    )


if __name__ == "__main__":
    main()
