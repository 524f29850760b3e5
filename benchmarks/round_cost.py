"""Seconds per round and bytes each client sends per round, for a configuration (default: the default).

    python benchmarks/round_cost.py [hydra overrides]

Runs `fedmemes simulate` once, reads the per-round timings from its metrics.json, and sizes
one client reply (the trainable tensors in an ArrayRecord) next to what it would be if the
frozen text encoder travelled too.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from flwr.app import ArrayRecord

from fedmemes.config import build_model, load_config
from fedmemes.federation import engine
from fedmemes.models.components.text_encoder import load_frozen


def main(overrides: list[str]) -> None:
    """Run one simulation and print the cost table."""
    run_dir = Path(tempfile.mkdtemp(prefix="round-cost-"))
    fedmemes = str(Path(sys.executable).parent / "fedmemes")  # the venv's, activated or not
    subprocess.run(
        [fedmemes, "simulate", *overrides, f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL
    )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    seconds = [r["seconds"] for r in metrics["rounds"]]
    per_round = [b - a for a, b in itertools.pairwise(seconds)]

    cfg = load_config(" ".join(overrides))
    model = build_model(cfg)
    sent = ArrayRecord(engine.trainable_state(model)).count_bytes()
    encoder, _ = load_frozen(model.text_encoder.name_or_path)
    frozen = sum(p.numel() * p.element_size() for p in encoder.parameters())

    print(
        f"config: {' '.join(overrides) or '(defaults)'}; {cfg.num_clients} clients, {cfg.num_rounds} rounds; run "
        f"dir {run_dir}"
    )
    print("| round | seconds | bytes sent per client |")
    print("|---:|---:|---:|")
    for i, s in enumerate(per_round, start=1):
        print(f"| {i} | {s:.1f} | {sent:,} |")
    steady = per_round[1:] or per_round
    print(
        f"first round (loads data, encodes captions, fills the cache): {per_round[0]:.1f} s; "
        f"later rounds: {sum(steady) / len(steady):.1f} s on average"
    )
    print(
        f"bytes per client reply: {sent:,} trainable vs {sent + frozen:,} if the frozen encoder travelled too "
        f"({(sent + frozen) / sent:.0f}x more)"
    )
    print(f"test AUROC {metrics['test']['auroc']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
