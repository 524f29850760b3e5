"""OCR on HarMeme: character error rate against the given captions, and test AUROC with given vs OCR captions.

    FEDMEMES_CACHE=/tmp/ocrcache .venv/bin/python benchmarks/ocr_harmeme.py --root /abs/harmeme \
        [--sample 200] [--workers 2] [--columns given ocr] [--seed 1] [--overrides "..."] [--work DIR]

CER: `--sample` memes drawn with a fixed seed from train + test, OCR text (fedmemes.data.ocr, cached
by image hash under $FEDMEMES_CACHE/ocr) against the annotated caption, case and spacing
normalised; mean, median and the share read under 20% CER. AUROC: the same federated recipe
(frozen-encoder early fusion, 4 clients, Dirichlet(1.0), in-process ClientApps as
benchmarks/real_table.py runs them) once with the given captions and once with `dataset.ocr=always`
(every caption replaced by OCR text). Reads every image once for the OCR column (3,544 for HarMeme):
run this script's CER part first or `fedmemes data ocr ROOT/images --workers 2` to fill the cache.
HarMeme's licence is research-only: nothing it produces belongs in a repository.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmemes.data.ocr import OcrReader, char_error_rate
from fedmemes.federation.testing import run_in_process

RECIPE = (
    "model=early_fusion model/image_encoder=small_cnn image_size=64 model/text_encoder=frozen_ngrams "
    "+dataset.source.check_images=false num_clients=4 partition=dirichlet partition.alpha=1.0"
)
COLUMNS = {"given": "dataset.ocr=never", "ocr": "dataset.ocr=always"}


def cer_sample(root: Path, n: int, seed: int, cache: str, workers: int) -> list[float]:
    """Return the CER of `n` seeded train + test memes, OCR text against the given caption."""
    rows = [json.loads(x) for s in ("train", "test") for x in (root / "annotations" / f"{s}.jsonl").open()]
    rows = random.Random(seed).sample(rows, n)
    texts = OcrReader(cache).read_many([root / "images" / r["image"] for r in rows], workers)
    return [char_error_rate(r["text"], t) for r, t in zip(rows, texts, strict=True)]


def main() -> None:
    """Print the CER of the sample and the test AUROC of each column."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--root", type=Path, required=True, help="HarMeme in MMF's layout: annotations/, images/")
    p.add_argument("--sample", type=int, default=200, help="memes for the CER (0: skip it)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="tesseract processes at once")
    p.add_argument("--columns", nargs="*", default=list(COLUMNS), choices=list(COLUMNS))
    p.add_argument("--seed", type=int, default=1, help="random_seed of the federated runs")
    p.add_argument("--overrides", default="", help="extra Hydra overrides for both columns")
    p.add_argument("--work", default=None, help="run dirs (default: a new temp dir)")
    args = p.parse_args()
    torch.set_num_threads(1)  # shared cores: one thread, like each simulated client
    from fedmemes.config import load_config

    cache = str(load_config("").cache_dir)
    if args.sample:
        started = time.monotonic()
        cers = cer_sample(args.root, args.sample, args.sample_seed, cache, args.workers)
        print(
            f"CER on {len(cers)} memes (seed {args.sample_seed}, train + test): mean {statistics.mean(cers):.3f}, "
            f"median {statistics.median(cers):.3f}, read under 0.2: {sum(c < 0.2 for c in cers) / len(cers):.0%} "
            f"[{time.monotonic() - started:.0f}s]",
            flush=True,
        )
    work = Path(args.work or tempfile.mkdtemp(prefix="ocr_harmeme-")).absolute()
    base = f"dataset=harmeme dataset.root={args.root.absolute()} dataset.on_error=skip {RECIPE} {args.overrides}"
    for name in args.columns:
        started = time.monotonic()
        metrics = run_in_process(
            f"{base} {COLUMNS[name]} random_seed={args.seed} overwrite=true", work / f"{name}-seed{args.seed}", 4
        )
        test = metrics["test"]
        print(
            f"captions={name}: test AUROC {test['auroc']:.3f}, macro-F1 {test['f1_macro']:.3f}, best round "
            f"{metrics['best_round']} [{time.monotonic() - started:.0f}s] ({COLUMNS[name]}; {base})",
            flush=True,
        )


if __name__ == "__main__":
    main()
