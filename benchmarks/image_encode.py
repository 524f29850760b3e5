"""EfficientNet-Lite0 encode throughput per image size, and (with --probe) what each size is worth.

    python benchmarks/image_encode.py                          # throughput on random images
    python benchmarks/image_encode.py --root DIR --dataset harmeme --probe   # + linear-probe test AUROC

Throughput: images/s of the frozen trunk at 224 / 160 / 128 px, side by side in one process
(`--threads` torch threads; the first pass is a warm-up). `--probe` encodes the whole set at each
size through the node's feature cache (so a later `fedmemes simulate` with the same
`FEDMEMES_CACHE` reuses it) and fits a logistic regression on train, scored on the test split.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedmemes.models.components.efficientnet import EfficientNetLite0


def throughput(sizes: list[int], n: int, batch: int) -> dict[int, float]:
    """Return images/s of `encode_images` per size on random uint8 images."""
    enc = EfficientNetLite0()
    out = {}
    for size in sizes:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
        enc.encode_images(images[:batch])  # warm-up
        start = time.perf_counter()
        for i in range(0, n, batch):
            enc.encode_images(images[i : i + batch])
        out[size] = n / (time.perf_counter() - start)
    return out


def probe(root: str, dataset: str, sizes: list[int], cache: str) -> dict[int, tuple[float, float]]:
    """Return (test AUROC of a logistic regression on frozen features, encode seconds) per size."""
    from pathlib import Path

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from fedmemes.data.features import encode_images
    from fedmemes.data.harmeme import HarMemeSource
    from fedmemes.data.local_dir import LocalDirSource

    # Rows are validated by the source; images are decoded by the encoding itself, so no separate check pass.
    kw = {"on_error": "skip", "check_images": False}
    source = HarMemeSource(root, **kw) if dataset == "harmeme" else LocalDirSource(root, **kw)
    splits = source.load()
    test_split = "test_seen" if "test_seen" in splits else "dev_seen"
    enc = EfficientNetLite0()
    out = {}
    for size in sizes:
        start = time.perf_counter()
        feats = {
            s: encode_images([m.img for m in splits[s]], size, enc, Path(cache) / "features")
            for s in ("train", test_split)
        }
        seconds = time.perf_counter() - start
        y = {s: np.array([m.label for m in splits[s]]) for s in feats}
        scaler = StandardScaler().fit(feats["train"].numpy())
        clf = LogisticRegression(C=0.05, max_iter=2000).fit(scaler.transform(feats["train"].numpy()), y["train"])
        prob = clf.predict_proba(scaler.transform(feats[test_split].numpy()))[:, 1]
        out[size] = (float(roc_auc_score(y[test_split], prob)), seconds)
    return out


def main() -> None:
    """Print the throughput table (and the probe table with --probe)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160, 128])
    parser.add_argument("--n", type=int, default=64, help="random images per size for the throughput")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--root", default=None)
    parser.add_argument("--dataset", choices=("harmeme", "hateful_memes"), default="harmeme")
    parser.add_argument("--probe", action="store_true")
    parser.add_argument(
        "--cache", default=None, help="feature cache folder (default: $FEDMEMES_CACHE or ~/.cache/fedmemes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = throughput(args.sizes, args.n, args.batch)
    base = rates[max(args.sizes)]
    print(f"EfficientNet-Lite0 encode throughput, {args.threads} torch thread(s), batch {args.batch}, {args.n} images")
    print("| size | images/s | x vs largest | est. s for 3,544 images (HarMeme) |")
    print("|---|---|---|---|")
    for size, rate in rates.items():
        print(f"| {size} | {rate:.1f} | {rate / base:.2f} | {3544 / rate:.0f} |")
    if args.probe:
        if not args.root:
            parser.error("--probe needs --root")
        import os

        cache = args.cache or os.environ.get("FEDMEMES_CACHE") or os.path.expanduser("~/.cache/fedmemes")
        print(f"\nlinear probe (logistic regression on frozen pooled features), {args.dataset}, train -> test")
        print("| size | test AUROC | encode s (cached: ~0) |")
        print("|---|---|---|")
        for size, (auroc, seconds) in probe(args.root, args.dataset, args.sizes, cache).items():
            print(f"| {size} | {auroc:.3f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
