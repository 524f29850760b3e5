"""Every config group option composes and instantiates; seed keys keep their meaning."""

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from omegaconf.errors import ReadonlyConfigError

import fedmemes
from fedmemes.config import build_model, build_strategy, load_config, overrides_of
from fedmemes.data.partitioners import partitioner_spec

CONF = Path(fedmemes.__file__).parent / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_defaults_match_the_seed_keys():
    cfg = load_config("")
    for key in ("random_seed", "lr", "num_epochs", "batch_size", "num_rounds", "clients_per_round", "num_clients"):
        assert key in cfg
    assert cfg.dataset.validation_split == 0.2
    assert cfg.model._target_.endswith("EarlyFusion")
    assert cfg.server.strategy._target_ == "flwr.serverapp.strategy.FedAvg"
    assert {"text_hidden_dim", "image_output_dim", "fusion_output_dim", "output_size"} <= set(cfg.model)


def test_command_line_overrides():
    cfg = load_config("num_rounds=5 num_clients=4 partition=dirichlet partition.alpha=0.3")
    assert (cfg.num_rounds, cfg.num_clients, cfg.partition.alpha, cfg.clients_per_round) == (5, 4, 0.3, None)
    assert build_strategy(cfg).min_train_nodes == 4  # clients_per_round=null: fraction_train=1.0 of 4 clients


@pytest.mark.parametrize("name", _options("model"))
def test_every_model_config_instantiates(name):
    model = build_model(load_config(f"model={name}"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0


@pytest.mark.parametrize("name", _options("partition"))
def test_every_partition_config_instantiates(name):
    spec = load_config(f"partition={name}").partition
    assert get_class(spec._target_) is not None


@pytest.mark.parametrize("name", _options("strategy"))
def test_every_strategy_config_instantiates(name):
    strategy = build_strategy(load_config(f"strategy={name}"))
    assert hasattr(strategy, "start")


@pytest.mark.parametrize("name", _options("optimizer"))
def test_every_optimizer_config_builds_an_optimizer_with_the_run_lr(name):
    cfg = load_config(f"optimizer={name} lr=0.02")
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = instantiate(cfg.optimizer)(params, lr=cfg.lr)
    assert isinstance(opt, torch.optim.Optimizer) and opt.param_groups[0]["lr"] == 0.02


@pytest.mark.parametrize("name", _options("dataset"))
def test_every_dataset_config_names_a_source(name):
    extra = " dataset.root=/tmp/none" if name in ("hateful_memes", "harmeme") else ""
    cfg = load_config(f"dataset={name}{extra}")
    assert get_class(cfg.dataset.source._target_) is not None


def test_debug_preset():
    cfg = load_config("debug=tiny")
    assert cfg.num_rounds == 5 and cfg.dataset.source.n_train <= 600 and cfg.image_size < 64


def test_seed_strategy_keys_are_mapped():
    cfg = load_config("+server.strategy.fraction_fit=0.5 +server.strategy.min_fit_clients=1")
    strategy = build_strategy(cfg)
    assert strategy.fraction_train == 0.5 and strategy.min_train_nodes == 1


def test_user_strategy_class_on_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_strategies.py").write_text(
        "from flwr.serverapp.strategy import FedAvg\n"
        "class Mine(FedAvg):\n"
        "    def __init__(self, alpha=0.5, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.alpha = alpha\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    strategy = build_strategy(load_config("server.strategy._target_=my_strategies.Mine +server.strategy.alpha=0.7"))
    assert type(strategy).__name__ == "Mine" and strategy.alpha == 0.7


def test_overrides_travel_in_run_config_or_environment(monkeypatch):
    monkeypatch.setenv("FEDMEMES_OVERRIDES", "num_rounds=7")
    assert overrides_of({}) == "num_rounds=7"
    assert overrides_of({"overrides": "num_rounds=3"}) == "num_rounds=3"


def test_config_is_resolved_and_read_only():
    cfg = load_config("")
    assert "${" not in OmegaConf.to_yaml(cfg)
    with pytest.raises(ReadonlyConfigError):
        cfg.lr = 1.0
    spec = partitioner_spec(OmegaConf.to_container(cfg.partition))
    assert type(instantiate(spec, num_partitions=2)).__name__ == "DirichletPartitioner"
