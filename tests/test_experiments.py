"""conf/experiment/*.yaml: each preset opens with its command and sets what the benchmarks and tests used."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

import fedmemes
from fedmemes.config import load_config

EXPERIMENTS = Path(fedmemes.__file__).parent / "conf" / "experiment"
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
# preset -> dotted key -> value: what the override strings in tests/ and benchmarks/ set before they became files.
EXPECTED: dict[str, dict[str, Any]] = {
    "strategy_smoke": {
        "num_rounds": 2,
        "num_epochs": 1,
        "image_size": 32,
        "dataset.source.n_train": 160,
        "dataset.source.n_dev": 40,
        "dataset.source.n_test": 40,
        "dataset.source.image_size": 48,
        "partition._target_": "flwr_datasets.partitioner.IidPartitioner",
        "model.image_encoder.width": 8,
        "model.image_output_dim": 16,
        "model.text_hidden_dim": 32,
        "model.fusion_output_dim": 32,
    },
    "tiny_run": {
        "num_rounds": 1,
        "num_epochs": 2,
        "image_size": 32,
        "dataset.source.image_size": 32,
        "dataset.source.n_train": 240,
        "dataset.source.n_dev": 60,
        "dataset.source.n_test": 60,
    },
    "fedsgd": {
        "num_clients": 6,
        "num_rounds": 100,
        "local_steps": 1,
        "lr": 0.1,
        "random_seed": 1,
        "optimizer._target_": "torch.optim.SGD",
        "partition.alpha": 0.1,
        "partition.text_only_clients": 2,
    },
    "faults": {"num_clients": 4, "num_rounds": 6, "partition._target_": "flwr_datasets.partitioner.IidPartitioner"},
    "skew_benchmark": {
        "num_clients": 6,
        "num_rounds": 30,
        "num_epochs": 1,
        "optimizer._target_": "torch.optim.Adam",
    },
    "label_skew": {
        "num_clients": 6,
        "num_rounds": 100,
        "partition.alpha": 0.3,
        "loss._target_": "fedmemes.federation.local_objectives.FedLCLoss",
        "server.strategy._target_": "flwr.serverapp.strategy.FedAdam",
        "server.strategy.eta": 0.02,
        "optimizer._target_": "torch.optim.SGD",
        "local_steps": 1,  # the FedSGD regime with a server Adam (it was FedAvg + FedLC over whole epochs)
        "lr": 0.1,
    },
    "harmeme": {  # real_memes on HarMeme: MiniLM (+ n-grams) fine-tuned or frozen, chosen on the hold-out
        "num_clients": 4,
        "num_rounds": 15,  # an upper bound: server.patience ends the run
        "server.patience": 3,
        "server.trial_rounds": 2,
        "server.recipes": {
            "finetune": "model/text_encoder=finetune_ngrams lr=1e-4",
            "frozen": "model/text_encoder=frozen_ngrams lr=1e-3",
        },
        "num_epochs": 1,
        "lr": 0.0001,
        "image_size": 160,
        "optimizer._target_": "torch.optim.AdamW",
        "model.text_encoder._target_": "fedmemes.models.components.char_ngrams.CharNgramText",
        "model.text_encoder.base._target_": "fedmemes.models.components.trainable_text_encoder.TrainableTextEncoder",
        "model.text_encoder.base.trainable_layers": 2,
        "model.image_encoder._target_": "fedmemes.models.components.efficientnet.EfficientNetLite0",
        "dataset.source._target_": "fedmemes.data.harmeme.HarMemeSource",
    },
}


def _command(name: str) -> list[str]:
    """Return the overrides of the `# fedmemes simulate ...` line that opens the preset."""
    lines = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_", f"{name}.yaml line 1: experiment files are global"
    assert lines[1].startswith(f"# fedmemes simulate experiment={name}"), f"{name}.yaml line 2 must give its command"
    return shlex.split(lines[1].removeprefix("# fedmemes simulate"))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_opens_with_a_command_that_composes(name: str) -> None:
    """The command on line 2 composes (placeholder paths are not opened at compose time)."""
    cfg = load_config(" ".join(_command(name)))
    assert cfg.num_clients >= 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_sets_the_old_override_string(name: str) -> None:
    """Each preset composes to the values its override string used to set."""
    cfg = load_config(f"experiment={name}")
    got = {key: OmegaConf.select(cfg, key) for key in EXPECTED[name]}
    assert got == EXPECTED[name]


def test_command_line_overrides_win_over_a_preset() -> None:
    """Per-call extras (a cache dir, the strategy, alpha) still override the preset."""
    cfg = load_config("experiment=skew_benchmark partition.alpha=0.1 strategy=scaffold num_rounds=3 cache_dir=/tmp/x")
    assert (cfg.partition.alpha, cfg.num_rounds, cfg.cache_dir) == (0.1, 3, "/tmp/x")
    assert cfg.server.strategy._target_ == "fedmemes.strategies.scaffold.Scaffold"
