"""A small finished run directory made through the server's own code (ServerRun), without Flower's loop."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from omegaconf import OmegaConf

from fedmemes import engine
from fedmemes.config import load_config
from fedmemes.node_datasets import _tensors, holdout
from fedmemes.server_app import ServerRun


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: these tensors are tiny, and on a busy 2-core CI box two threads spin (measured 20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def overrides_for(cache: Path) -> str:
    """Tiny synthetic memes (32 px) in their own cache folder."""
    return f"experiment=tiny_run cache_dir={cache}"


def make_run(base: Path) -> Path:
    """Build (once per session folder) a finished run: config.yaml, best/final.safetensors, metrics.json, checkpoint.pt."""
    run_dir = base / "tiny-run"
    if (run_dir / "metrics.json").is_file():
        return run_dir
    overrides = overrides_for(base / "cache")
    cfg = load_config(overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))  # as server_app.main writes it
    run = ServerRun(cfg, overrides, run_dir)
    torch.manual_seed(0)
    pool = _tensors(cfg, holdout(cfg).pool)
    engine.train(run.model, pool.dataset(), epochs=10, lr=3e-3, batch_size=32, device=torch.device("cpu"))
    state = engine.trainable_state(run.model)
    run.evaluate(1, ArrayRecord(state))  # hold-out scoring, best round, checkpoint: the server's path
    run.finish(ArrayRecord(state))  # best/final models, threshold on dev, test scores
    return run_dir
