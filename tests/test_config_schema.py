"""Bad overrides stop before any job starts with one line (key, value, what is allowed); good configs still pass."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fedmemes
from fedmemes import cli
from fedmemes.config import compose_checked, group_options, load_config
from fedmemes.config_schema import ConfigError

CONF = Path(fedmemes.__file__).parent / "conf"
MODELS = ", ".join(group_options("model"))
STRATEGIES = ", ".join(group_options("strategy"))
WITH_IMAGES = "cross_attention, early_fusion, feature_interaction, image_only, late_fusion"

# (overrides, the exact line on stderr after "error: ")
BAD = [
    ("num_clients=0", "num_clients=0 is not allowed: num_clients must be a whole number >= 1"),
    ("num_clients=abc", "num_clients=abc is not allowed: num_clients must be a whole number >= 1"),
    (
        "clients_per_round=5",
        "clients_per_round=5 is not allowed: clients_per_round must be null or a whole number in 1..2 (num_clients=2)",
    ),
    (
        "clients_per_round=0",
        "clients_per_round=0 is not allowed: clients_per_round must be null or a whole number in 1..2 (num_clients=2)",
    ),
    (
        "num_clients=4 clients_per_eval_round=9",
        "clients_per_eval_round=9 is not allowed: clients_per_eval_round must "
        "be null or a whole number in 1..4 (num_clients=4)",
    ),
    ("lr=abc", "lr=abc is not allowed: lr must be a number > 0"),
    ("lr=0", "lr=0 is not allowed: lr must be a number > 0"),
    ("lr=-0.1", "lr=-0.1 is not allowed: lr must be a number > 0"),
    ("batch_size=0", "batch_size=0 is not allowed: batch_size must be a whole number >= 1"),
    ("num_epochs=1.5", "num_epochs=1.5 is not allowed: num_epochs must be a whole number >= 1"),
    ("local_steps=0", "local_steps=0 is not allowed: local_steps must be null or a whole number >= 1"),
    ("num_rounds=0", "num_rounds=0 is not allowed: num_rounds must be a whole number >= 1"),
    ("image_size=8", "image_size=8 is not allowed: image_size must be a whole number >= 16"),
    ("local_val_share=1.0", "local_val_share=1.0 is not allowed: local_val_share must be a share in [0, 1), e.g. 0.1"),
    ("device=tpu", "device=tpu is not allowed: device must be one of auto, cpu, cuda, cuda:N"),
    ("amp=maybe", "amp=maybe is not allowed: amp must be one of auto, bf16, fp16, false"),
    ("verbose=maybe", "verbose=maybe is not allowed: verbose must be true or false"),
    ("model=foo", f"model=foo is not allowed: model must be one of {MODELS}"),
    ("strategy=nope", f"strategy=nope is not allowed: strategy must be one of {STRATEGIES}"),
    (
        "model/image_encoder=bar",
        "model/image_encoder=bar is not allowed: model/image_encoder must be one of "
        "clip, efficientnet_lite0, resnet18, small_cnn",
    ),
    ("logger=[csv,foo]", "logger=foo is not allowed: logger must be one of csv, mlflow, none, tensorboard"),
    (
        "experiment=nope",
        "experiment=nope is not allowed: experiment must be one of faults, fedsgd, harmeme, label_skew, real_memes, "
        "skew_benchmark, strategy_smoke, tiny_run",
    ),
    (
        "experiment=real_memes model=text_only",
        "experiment=real_memes sets model/image_encoder, but model=text_only "
        f"has no image_encoder: pick a model that has one ({WITH_IMAGES}) or leave out experiment=real_memes",
    ),
    (
        "server.status_port=70000",
        "server.status_port=70000 is not allowed: server.status_port must be null or a whole number in 1..65535",
    ),
    (
        "server.control_port=0",
        "server.control_port=0 is not allowed: server.control_port must be a whole number in 1..65535",
    ),
    (
        "server.address=localhost",
        "server.address=localhost is not allowed: server.address must be HOST:PORT with a port in 1..65535",
    ),
    ("server.eval_every=0", "server.eval_every=0 is not allowed: server.eval_every must be a whole number >= 1"),
    ("server.heartbeat_s=0", "server.heartbeat_s=0 is not allowed: server.heartbeat_s must be a number > 0"),
    ("server.round_timeout=-5", "server.round_timeout=-5 is not allowed: server.round_timeout must be a number > 0"),
    (
        "server.max_update_norm=big",
        "server.max_update_norm=big is not allowed: server.max_update_norm must be null, "
        "K*median (e.g. 3*median), a number > 0 or a list of both",
    ),
    (
        "server.max_client_weight=1.5",
        "server.max_client_weight=1.5 is not allowed: server.max_client_weight must be null, K/n with K >= 1 "
        "(e.g. 2/n) or a share in (0, 1]",
    ),
    (
        "simulation.client_cpus=0",
        "simulation.client_cpus=0 is not allowed: simulation.client_cpus must be a number > 0",
    ),
    (
        "simulation.client_gpus=-1",
        "simulation.client_gpus=-1 is not allowed: simulation.client_gpus must be a number >= 0, e.g. 0.5",
    ),
    (
        "partition.missing_text_rate=1.0",
        "partition.missing_text_rate=1.0 is not allowed: partition.missing_text_rate must be a rate in [0, 1)",
    ),
    (
        "partition.label_noise=[0.1,1.2]",
        "partition.label_noise=[0.1,1.2] is not allowed: partition.label_noise must "
        "be a rate in [0, 1) or a list of num_clients rates",
    ),
    (
        "partition.text_only_clients=1.5",
        "partition.text_only_clients=1.5 is not allowed: partition.text_only_clients "
        "must be a share in [0, 1) or a whole count of clients >= 0",
    ),
    (
        "nonsense=1",
        "nonsense=1 is not allowed: there is no key nonsense in the config; check the spelling, or add a "
        "new key with +nonsense=1",
    ),
    (
        "server.staus_port=1",
        "server.staus_port=1 is not allowed: there is no key server.staus_port in the config; "
        "check the spelling, or add a new key with +server.staus_port=1",
    ),
    (
        "lr=[1",
        "lr=[1 is not an override Hydra can read (no viable alternative at input '[1'); write key=value, "
        "e.g. lr=0.01 or partition.label_noise=[0.0,0.3]",
    ),
]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    return int(stop.value.code), capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "line"), BAD, ids=[b[0] for b in BAD])
def test_bad_override_stops_with_one_line(overrides, line, capsys):
    code, err = _run_cli(["simulate", *overrides.split()], capsys)
    assert (code, err) == (2, f"error: {line}\n")


@pytest.mark.parametrize(
    "command",
    [["data", "generate"], ["data", "inspect"], ["server"], ["simulate", "--cfg", "job"], ["server", "--cfg", "job"]],
)
def test_every_command_taking_overrides_checks_them(command, capsys):
    code, err = _run_cli([*command, "lr=abc"], capsys)
    assert (code, err) == (2, "error: lr=abc is not allowed: lr must be a number > 0\n")


def test_apps_get_the_same_error_from_load_config():
    # ServerApp, ClientApp, the deploy server and SuperNodes all compose through load_config.
    with pytest.raises(ConfigError, match=r"^batch_size=0 is not allowed: batch_size must be a whole number >= 1$"):
        load_config("batch_size=0")


def test_real_command_line_prints_no_traceback():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(fedmemes.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "simulate", "num_clients=2", "clients_per_round=5"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "error: clients_per_round=5 is not allowed: clients_per_round must be null or a whole "
        "number in 1..2 (num_clients=2)\n"
    )


def _presets(group: str) -> list[str]:
    return [f"{group}={name}" for name in group_options(group)]


GOOD = [
    "",
    "debug=tiny",
    "lr=1",
    "amp=false",
    "amp=bf16",
    "device=cuda:1",
    "local_steps=3",
    "local_val_share=0",
    "num_clients=5 clients_per_round=5 clients_per_eval_round=1",
    "server.status_port=null",
    "server.max_update_norm=[3*median,10.0]",
    "server.max_client_weight=null",
    "partition.label_noise=[0.0,0.3]",
    "partition.text_only_clients=1",
    "logger=[csv,tensorboard]",
    "+server.strategy.fraction_fit=0.5",
    "experiment=real_memes model=image_only",
    "hydra.run.dir=/tmp/somewhere",
    *_presets("experiment"),
    *_presets("debug"),
    *_presets("loss"),
    *_presets("logger"),
    *_presets("model/text_encoder"),
    *_presets("model/image_encoder"),
]
# Every model, strategy, partition, optimizer and dataset option goes through load_config (the same checks) in
# tests/test_config.py, which builds each one too: not repeated here to keep this file fast.


@pytest.mark.parametrize("overrides", GOOD)
def test_good_configs_compose_and_pass(overrides):
    cfg = compose_checked(overrides.split())
    assert cfg.num_clients >= 1 and cfg.lr > 0 and "_target_" in cfg.model


def test_values_get_their_types_and_groups_stay_free_form():
    cfg = compose_checked(["lr=1", "num_clients=3", "+model.my_extra_key=7", "+server.strategy.my_knob=x"])
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0 and cfg.num_clients == 3
    assert cfg.model.my_extra_key == 7 and cfg.server.strategy.my_knob == "x"


def test_defaults_stay_in_the_yaml():
    # the schema gives types only: each default in config.yaml wins over the dataclass's placeholder
    text = (CONF / "config.yaml").read_text()
    assert "- fedmemes_schema" in text.split("- dataset:")[0]
    cfg = compose_checked([])
    assert (cfg.lr, cfg.batch_size, cfg.server.status_port, cfg.server.flwr_home.endswith("flower/server")) == (
        0.001,
        32,
        8090,
        True,
    )


def test_an_own_search_path_adds_group_options(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("_target_: torch.nn.Identity\n")
    cfg = compose_checked([f"hydra.searchpath=[file://{tmp_path}]", "model=mine"])
    assert cfg.model._target_ == "torch.nn.Identity"
    with pytest.raises(ConfigError, match=r"^model=foo is not allowed: model must be one of .*\bmine\b"):
        compose_checked([f"hydra.searchpath=[file://{tmp_path}]", "model=foo"])


def test_a_config_dir_of_our_own_is_checked_too(tmp_path, capsys):
    # deploy/k8s mounts deployment.yaml (defaults: [config, _self_]) and runs `fedmemes server --config-dir ...`
    configmap = yaml.safe_load((Path(fedmemes.__file__).parents[1] / "deploy/k8s/configmap.yaml").read_text())
    (tmp_path / "deployment.yaml").write_text(configmap["data"]["deployment.yaml"])
    cfg = compose_checked([], "deployment", str(tmp_path))
    assert (cfg.num_rounds, cfg.server.address, cfg.lr) == (10, "0.0.0.0:9092", 0.001)
    code, err = _run_cli(["server", "--config-dir", str(tmp_path), "--config-name=deployment", "num_clients=0"], capsys)
    assert (code, err) == (2, "error: num_clients=0 is not allowed: num_clients must be a whole number >= 1\n")
