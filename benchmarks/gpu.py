"""Memes per second on CPU and, when present, CUDA: caption encoding, image encoding, head training, server scoring;
and seconds per federated round on each.

    python benchmarks/gpu.py [--memes 512] [--repeats 2] [--rounds 2] [hydra overrides, e.g. model=late_fusion]

Each step runs once to warm up (weights load, kernels compile), then `--repeats` times timed;
CUDA timings synchronise before the clock stops. On CUDA the training and scoring rows run
without autocast and with `amp=auto` (bf16, fp16 where bf16 is missing). Captions and images come
from the configured data source (synthetic by default).

The federated rows run `--rounds` rounds of the configured federation in this process (the real
ServerApp and ClientApps, no Ray) with `device=cpu`, then `device=cuda`, and read the seconds from
its metrics.json. Round 1 also builds each client's tensors, and encodes its captions the first
time (the feature cache then holds them for the next device). On the GPU machine, run this from
the bundle: `make gpu-bundle` here, `bash gpu-bundle/run.sh` there (benchmarks/gpu_bundle.py).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate

from fedmemes.config import build_model, load_config
from fedmemes.data.features import build_tensors
from fedmemes.data.images import load_image_array
from fedmemes.federation import engine
from fedmemes.federation.node_datasets import holdout
from fedmemes.federation.testing import run_in_process


def _rate(n: int, fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: loads weights, moves them, picks kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n * repeats / (time.perf_counter() - start)


def _decode(memes: list, size: int) -> None:
    for m in memes:
        load_image_array(m.img, size)


@torch.no_grad()
def _encode_images(
    encoder: torch.nn.Module, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None
) -> None:
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for i in range(0, len(images), 64):
            encoder(images[i : i + 64].to(device, non_blocking=True).float().div_(255.0))


def _round_seconds(overrides: list[str], device: torch.device, rounds: int) -> list[float]:
    """Run `rounds` federated rounds in process on `device`; return each round's seconds (server scoring included)."""
    with tempfile.TemporaryDirectory(prefix="gpu-rounds-") as run_dir:
        metrics = run_in_process(
            " ".join([*overrides, f"device={device.type}", f"num_rounds={rounds}"]),
            Path(run_dir),
            load_config(" ".join(overrides)).num_clients,
        )
    seconds = [row["seconds"] for row in metrics["rounds"]]  # cumulative; row 0 scores the initial model
    return [b - a for a, b in itertools.pairwise(seconds)]


def main() -> None:
    """Print one row per step, device and precision."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memes", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="federated rounds per device (0: none)")
    args, overrides = parser.parse_known_args()
    cfg = load_config(" ".join(overrides))
    memes = holdout(cfg).pool[: args.memes]
    n = len(memes)
    texts = [m.text for m in memes]
    # uint8 (N, 3, S, S)
    images = torch.stack([torch.from_numpy(load_image_array(m.img, cfg.image_size)) for m in memes])
    if cfg.device != "auto":
        raise SystemExit("gpu.py measures every device it finds: leave device=auto")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"{n} memes, image_size {cfg.image_size}, model {cfg.model._target_.rsplit('.', 1)[-1]}, "
        f"batch {cfg.batch_size}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {name}"
    )
    print("| step | device | precision | memes/s |")
    print("|---|---|---|---:|")

    for device in devices:
        encoder = instantiate(cfg.model.text_encoder)
        if hasattr(encoder, "device"):  # frozen encoders run their first (uncached) encoding here
            encoder.device = str(device)
            rate = _rate(n, partial(encoder.encode, texts), device, args.repeats)
            print(f"| caption encoding ({type(encoder).__name__}) | {device.type} | fp32 | {rate:,.0f} |")
        data = build_tensors(memes, encoder, cfg.image_size, cfg.cache_dir).dataset()  # what a client trains on
        if device.type == "cpu":
            k = min(n, 64)
            rate = _rate(k, partial(_decode, memes[:k], cfg.image_size), device, 1)
            print(f"| image decoding + resize (files; first time only, then cached) | cpu | uint8 | {rate:,.0f} |")
        for amp in [False] if device.type == "cpu" else [False, "auto"]:
            dtype = engine.autocast_dtype(amp, device)
            label = str(dtype).removeprefix("torch.") if dtype else "fp32"
            torch.manual_seed(0)
            model = build_model(cfg).to(device).eval()
            image_encoder = getattr(model, "image_encoder", None)
            if image_encoder is not None:
                rate = _rate(n, partial(_encode_images, image_encoder, images, device, dtype), device, args.repeats)
                print(
                    f"| image encoding ({type(image_encoder).__name__} forward) | {device.type} | {label} | "
                    f"{rate:,.0f} |"
                )
            train = partial(
                engine.train,
                model,
                data,
                epochs=1,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                device=device,
                optimizer=instantiate(cfg.optimizer),
                amp_dtype=dtype,
            )
            print(
                f"| training: CNN + fusion head, 1 epoch | {device.type} | {label} | "
                f"{_rate(n, train, device, args.repeats):,.0f} |"
            )
            score = partial(engine.evaluate, model, data, 256, device, amp_dtype=dtype)
            print(
                f"| server scoring (batch 256) | {device.type} | {label} | "
                f"{_rate(n, score, device, args.repeats):,.0f} |"
            )

    if args.rounds > 0:
        logging.getLogger("flwr").setLevel(logging.ERROR)  # the ServerApp's round-by-round log would bury the table
        per_device = {device.type: _round_seconds(overrides, device, args.rounds) for device in devices}
        strategy = cfg.server.strategy._target_.rsplit(".", 1)[-1]
        head = f"federated rounds ({cfg.num_clients} clients in process, {strategy})"
        print(f"\n| {head} | device | round 1 (s) | later rounds (s, mean) |")
        print("|---|---|---:|---:|")
        for device_type, per_round in per_device.items():  # printed after the runs: their warnings come first
            later = f"{sum(per_round[1:]) / len(per_round[1:]):.1f}" if len(per_round) > 1 else "-"
            print(f"| {args.rounds} rounds | {device_type} | {per_round[0]:.1f} | {later} |")


if __name__ == "__main__":
    main()
