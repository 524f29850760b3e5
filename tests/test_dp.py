"""Differential privacy: the epsilon each round reports is Flower's accountant's, the budget ends a run with exit 3,
client.dp adds LocalDpMod's noise to the train reply, and budgets nobody can account are refused in one line."""

from __future__ import annotations

import json
import logging
import math
import shlex
import subprocess
import sys

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedmemes import cli
from fedmemes.bookkeeping import checkpoint
from fedmemes.bookkeeping.run_steps import EXIT_PRIVACY_BUDGET
from fedmemes.config import build_model, build_strategy, load_config
from fedmemes.config_schema import ConfigError
from fedmemes.federation import client_app, engine
from fedmemes.federation.testing import StaticGrid, reply_from, run_in_process
from fedmemes.privacy import client_dp, server_dp, site_policy

GLOBAL = {"t.w": np.zeros(2, np.float32), "h.w": np.zeros(2, np.float32)}


def expected_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of `releases` Gaussian releases, from Google's dp-accounting directly (not through fedmemes or the
    wrapper): the same RDP accountant Flower wraps, add-or-remove-one neighbours, no sampling amplification."""
    accountant = rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))


def _reply(node: int, value: float, n: int) -> Message:
    arrays = ArrayRecord({k: Array(np.full_like(v, value)) for k, v in GLOBAL.items()})
    return reply_from(node, RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": n})}))


# --- (a) the epsilon reported is the accountant's --------------------------------------------------------------------


@pytest.mark.usefixtures("server_identity")
def test_each_round_reports_the_accountants_epsilon():
    overrides = "strategy=dp_fixed num_clients=3 server.strategy.noise_multiplier=1.3 server.dp.target_delta=1e-4"
    strategy = build_strategy(load_config(overrides))
    assert strategy.accountant is not None and strategy.uniform_weights
    for rnd in (1, 2, 3):
        global_arrays = ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})
        assert len(list(strategy.configure_train(rnd, global_arrays, ConfigRecord(), StaticGrid(1, 2, 3)))) == 3
        # unequal num-examples: the checks weigh every reply once, as Flower's accounted FedAvg path requires
        arrays, _ = strategy.aggregate_train(rnd, [_reply(1, 0.1, 10), _reply(2, 0.2, 30), _reply(3, 0.3, 50)])
        assert arrays is not None
        row = server_dp.spent(strategy)
        assert row["dp_releases"] == rnd and row["delta"] == 1e-4
        assert row["epsilon"] == pytest.approx(expected_epsilon(1.3, rnd, 1e-4), rel=1e-9)


@pytest.mark.usefixtures("server_identity")
def test_fewer_replies_than_sampled_release_nothing_and_spend_nothing():
    strategy = build_strategy(load_config("strategy=dp_fixed num_clients=3 server.strategy.noise_multiplier=1.0"))
    global_arrays = ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})
    list(strategy.configure_train(1, global_arrays, ConfigRecord(), StaticGrid(1, 2, 3)))
    arrays, _ = strategy.aggregate_train(1, [_reply(1, 0.1, 10), _reply(2, 0.2, 10)])  # node 3 never answered
    np.testing.assert_array_equal(arrays["t.w"].numpy(), GLOBAL["t.w"])  # the previous model, un-noised
    assert server_dp.spent(strategy)["epsilon"] == 0.0


def test_checkpoint_keeps_the_ledger_and_a_resume_may_raise_the_budget():
    cfg = load_config("strategy=dp_fixed num_clients=2 server.strategy.noise_multiplier=1.0 server.dp.max_epsilon=5")
    before = build_strategy(cfg)
    from flwr.serverapp import GaussianPrivacyEvent

    before.accountant.compose(GaussianPrivacyEvent(1.0, 2, 2), 2)
    saved = checkpoint.strategy_state(before)
    after = build_strategy(
        load_config("strategy=dp_fixed num_clients=2 server.strategy.noise_multiplier=1.0 server.dp.max_epsilon=9")
    )
    checkpoint.restore_strategy(after, saved)
    assert server_dp.spent(after)["epsilon"] == pytest.approx(expected_epsilon(1.0, 2, 1e-5))
    assert after.accountant.config.max_epsilon == 9.0
    with pytest.raises(ValueError, match="no privacy ledger"):
        checkpoint.restore_strategy(after, {})


# --- (b) the budget ends the run: exit 3, the rounds before stand --------------------------------------------------


def _budget_for_two_rounds(noise: float) -> float:
    return (expected_epsilon(noise, 2, 1e-5) + expected_epsilon(noise, 3, 1e-5)) / 2


@pytest.mark.slow
def test_budget_stops_before_the_round_that_would_exceed_it(tiny_data, tmp_path, caplog):
    budget = _budget_for_two_rounds(1.0)
    overrides = (
        f"{tiny_data.overrides} num_rounds=4 strategy=dp_fixed server.strategy.noise_multiplier=1.0 "
        f"server.strategy.clipping_norm=0.5 server.dp.max_epsilon={budget}"
    )
    with caplog.at_level(logging.INFO, logger="fedmemes"):
        metrics = run_in_process(overrides, tmp_path / "run", 2)
    trained = [r for r in metrics["rounds"] if r["round"] > 0]
    assert [r["round"] for r in trained] == [1, 2]
    for r in trained:  # (a) again, through the server's own rows and round lines
        assert r["epsilon"] == pytest.approx(expected_epsilon(1.0, r["round"], 1e-5), rel=1e-9)
        assert f"epsilon {r['epsilon']:.3f} (delta 1e-05)" in caplog.text
    ended = metrics["ended"]
    assert ended["code"] == EXIT_PRIVACY_BUDGET
    assert f"server.dp.max_epsilon={budget}" in ended["reason"] and "after round 2" in ended["reason"]
    assert metrics["test"]["n"] > 0 and (tmp_path / "run" / "final.safetensors").is_file()  # scored and kept
    assert checkpoint.load(tmp_path / "run").server_round == 2


@pytest.mark.slow
def test_simulate_exits_3_when_the_budget_is_spent(cache_dir, tmp_path):
    budget = _budget_for_two_rounds(1.0)
    run_dir = tmp_path / "run"
    args = ["debug=tiny", "num_rounds=3", "strategy=dp_fixed", "server.strategy.noise_multiplier=1.0"]
    proc = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "simulate", *args, f"server.dp.max_epsilon={budget}"]
        + [f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == EXIT_PRIVACY_BUDGET, proc.stderr[-3000:]
    assert "privacy budget server.dp.max_epsilon" in proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ended"]["code"] == EXIT_PRIVACY_BUDGET
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2] and metrics["test"]["n"] > 0


# --- (c) client.dp: the train reply carries LocalDpMod's noise -------------------------------------------------------


def _context(overrides: str) -> Context:
    node = {"partition-id": 1, "num-partitions": 2}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={"overrides": overrides})


def _train_message(cfg) -> tuple[Message, dict[str, np.ndarray]]:
    torch.manual_seed(0)
    sent = engine.trainable_state(build_model(cfg))
    content = RecordDict(
        {"arrays": ArrayRecord(sent), "config": ConfigRecord({"lr": 0.003, "num_epochs": 1, "server-round": 1})}
    )
    msg = Message(content=content, dst_node_id=7, message_type="train")
    return msg, {k: v.numpy() for k, v in sent.items()}


def _flat(reply: Message) -> np.ndarray:
    return np.concatenate([a.numpy().ravel() for a in reply.content["arrays"].values()]).astype(np.float64)


@pytest.mark.usefixtures("server_identity", "one_thread")
def test_client_dp_adds_local_dp_mods_documented_noise(tiny_data):
    base = f"{tiny_data.overrides} num_clients=2"
    msg, sent = _train_message(load_config(base))
    clean = client_app.train(msg, _context(base))  # the handler alone: no mod

    def again(m: Message, c: Context) -> Message:  # the same clean reply, a fresh copy per call
        return Message(content=RecordDict({k: v for k, v in clean.content.items()}), reply_to=m)

    assert client_dp.local_dp(msg, _context(base), again).content["arrays"] is clean.content["arrays"]  # off: as is

    # no clipping (a huge bound): the difference is the noise alone, at the scale LocalDpMod documents
    eps, delta, sens = 4.0, 1e-5, 0.05
    noisy_overrides = f"{base} client.dp.epsilon={eps} client.dp.delta={delta} client.dp.sensitivity={sens} "
    noisy = client_dp.local_dp(msg, _context(noisy_overrides + "client.dp.clipping_norm=1e6"), again)
    diff = _flat(noisy) - _flat(clean)
    documented = sens * math.sqrt(2 * math.log(1.25 / delta)) / eps
    assert diff.size > 1000 and abs(diff.mean()) < 5 * documented / math.sqrt(diff.size)
    assert diff.std() == pytest.approx(documented, rel=0.05)

    # a tight bound, next to no noise: the update that leaves has the clipping norm
    clipped = client_dp.local_dp(
        msg, _context(f"{base} client.dp.epsilon=1000 client.dp.sensitivity=1e-9 client.dp.clipping_norm=0.01"), again
    )
    update = _flat(clipped) - np.concatenate([v.ravel() for v in sent.values()])
    assert np.linalg.norm(_flat(clean) - np.concatenate([v.ravel() for v in sent.values()])) > 0.01
    assert np.linalg.norm(update) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.usefixtures("server_identity", "one_thread")
def test_a_sites_own_local_dp_holds_whatever_the_run_asks(tiny_data, tmp_path, monkeypatch):
    base = f"{tiny_data.overrides} num_clients=2"
    msg, _ = _train_message(load_config(base))
    clean = client_app.train(msg, _context(base))

    def again(m: Message, c: Context) -> Message:
        return Message(content=RecordDict({k: v for k, v in clean.content.items()}), reply_to=m)

    site = tmp_path / "site.yaml"
    site.write_text("local_dp: {epsilon: 4.0, delta: 1.0e-5, clipping_norm: 1.0e+6}\n")
    monkeypatch.setenv(site_policy.POLICY_ENV, str(site))
    documented = 2e6 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 4.0  # sensitivity 2 x clipping_norm
    for run in (base, f"{base} client.dp.epsilon=1000 client.dp.sensitivity=1e-9 client.dp.clipping_norm=1e7"):
        diff = _flat(client_dp.local_dp(msg, _context(run), again)) - _flat(clean)
        assert diff.std() == pytest.approx(documented, rel=0.05)  # the site's epsilon and sensitivity, not the run's


@pytest.mark.usefixtures("server_identity", "one_thread")
def test_the_clientapps_train_handler_runs_the_mod(tiny_data):
    base = f"{tiny_data.overrides} num_clients=2"
    msg, sent = _train_message(load_config(base))
    overrides = f"{base} client.dp.epsilon=1000 client.dp.sensitivity=1e-9 client.dp.clipping_norm=0.01"
    reply = client_app.app(msg, _context(overrides))  # through Flower's dispatch: the handler with its mods
    update = _flat(reply) - np.concatenate([v.ravel() for v in sent.values()])
    assert np.linalg.norm(update) == pytest.approx(0.01, rel=1e-3)
    assert reply.content["metrics"]["num-examples"] > 0


# --- (d) budgets nobody can account are refused in one line ----------------------------------------------------------

REFUSED = {
    "dp_adaptive": ("strategy=dp_adaptive", "adaptive clipping"),
    "robust inside": ("strategy=dp_fixed strategy@server.strategy.strategy=krum", "the wrapped Krum"),
    "median inside": ("strategy=dp_fixed strategy@server.strategy.strategy=fedmedian", "the wrapped FedMedian"),
    "no noise": ("strategy=dp_fixed server.strategy.noise_multiplier=0.0", "noise_multiplier=0"),
    "no dp": ("strategy=fedavg", "adds no DP noise"),
    "recipes": ("""strategy=dp_fixed 'server.recipes={a: "lr=1e-3"}'""", "server.recipes"),
}


@pytest.mark.parametrize(("overrides", "why"), REFUSED.values(), ids=REFUSED.keys())
def test_a_budget_no_accountant_can_keep_is_refused(overrides, why, capsys):
    with pytest.raises(ConfigError, match=rf"^server.dp.max_epsilon=2.0 is not allowed: .*{why}.*max_epsilon=null$"):
        server_dp.check(load_config(f"{overrides} server.dp.max_epsilon=2"))
    with pytest.raises(SystemExit) as stop:  # at config time: before Ray or a SuperLink starts
        cli.main(["simulate", *shlex.split(overrides), "server.dp.max_epsilon=2"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: server.dp.max_epsilon=2.0") and err.count("\n") == 1
    assert server_dp.accountant_for(load_config(overrides)) is None  # without a budget: run, report no epsilon


def test_fedprox_inside_is_accounted():
    cfg = load_config("strategy=dp_fixed strategy@server.strategy.strategy=fedprox server.dp.max_epsilon=2")
    server_dp.check(cfg)
    assert build_strategy(cfg).accountant.config.max_epsilon == 2.0
