"""Hostile scenarios beyond one crafted reply: colluders, many clients, several rounds, evaluate replies, log forgery.

Each scenario returns one line saying what happened; `python tests/test_reply_fuzz.py` prints them
under the per-reply table. The server must survive each, and the honest clients must keep the model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedmemes.federation.client_corrections import CV_DELTA
from fedmemes.federation.engine import classification_metrics
from fedmemes.federation.testing import StaticGrid, reply_from
from fedmemes.strategies import ModalityAwareAvg, PerformanceWeightedAvg, with_reply_checks
from fedmemes.strategies.reply_content import EVALUATE_METRICS
from fedmemes.strategies.scaffold import Scaffold

pytestmark = pytest.mark.usefixtures("server_identity")  # conftest: Flower stamps messages with it
HOSTILE = 99
TARGET = np.linspace(-1.0, 1.0, 20)  # the honest clients' common optimum: loss(w) = |w - TARGET|^2 / 2
METRICS = {"num-examples": 10, "train_loss": 0.5, "val_accuracy": 0.5, "n_text": 10, "n_image": 10, "n_both": 10}


def _reply(node: int, arrays: dict[str, np.ndarray], kind: str = "train", **metrics: float) -> Message:
    records = {k: ArrayRecord({n: Array(v.astype(np.float32)) for n, v in a.items()}) for k, a in arrays.items()}
    return reply_from(node, RecordDict({**records, "metrics": MetricRecord({**METRICS, **metrics})}), kind)


def _strategy(cls: type = FedAvg, nodes: int = 3, **kwargs: object):
    reports: dict[int, dict] = {}
    strategy = with_reply_checks(cls)(min_train_nodes=1, **kwargs)
    strategy.reply_report_fn = reports.__setitem__
    strategy.grid = StaticGrid(*range(1, nodes), HOSTILE)
    return strategy, reports


def _send(strategy, server_round: int, model: dict[str, np.ndarray]) -> None:
    arrays = ArrayRecord({k: Array(v.astype(np.float32)) for k, v in model.items()})
    strategy.configure_train(server_round, arrays, ConfigRecord(), strategy.grid)


def reversed_update_among_ten() -> tuple[bool, str]:
    """9 honest clients step towards TARGET; one sends the reversed step at 100x, claiming 10^9 memes."""
    strategy, reports = _strategy(nodes=10)
    w, losses = {"w": np.zeros(20)}, []
    for rnd in range(1, 6):
        _send(strategy, rnd, w)
        rng = np.random.default_rng(rnd)
        honest = [w["w"] + 0.2 * (TARGET - w["w"]) + 0.01 * rng.normal(size=20) for _ in range(9)]
        liar = w["w"] - 100 * 0.2 * (TARGET - w["w"])
        replies = [_reply(i + 1, {"arrays": {"w": h}}) for i, h in enumerate(honest)]
        replies.append(_reply(HOSTILE, {"arrays": {"w": liar}}, **{"num-examples": 10**9}))
        arrays, _ = strategy.aggregate_train(rnd, replies)
        w = {"w": arrays["w"].numpy().astype(np.float64)}
        losses.append(float(((w["w"] - TARGET) ** 2).sum() / 2))
    start = float((TARGET**2).sum() / 2)
    falls = all(b < a for a, b in zip([start, *losses], losses, strict=False))
    acted = all(r["clipped_replies"] == 1 and r["capped_weights"] == 1 for r in reports.values())
    return falls and acted, f"clipped+capped each round; loss {start:.2f} -> {losses[-1]:.2f} in 5 rounds"


def two_clients_at_1e308() -> tuple[bool, str]:
    strategy, reports = _strategy(nodes=3)
    _send(strategy, 1, {"w": np.zeros(20)})
    replies = [_reply(n, {"arrays": {"w": np.ones(20)}}, **{"num-examples": 1e308}) for n in (2, HOSTILE)]
    arrays, _ = strategy.aggregate_train(1, [_reply(1, {"arrays": {"w": np.ones(20)}}), *replies])
    kept = bool(reports[1]["kept_previous_model"]) and np.array_equal(arrays["w"].numpy(), np.zeros(20, np.float32))
    return reports[1]["dropped_replies"] == 2 and kept, "both dropped; 1 sound reply < 2: previous model kept"


def bad_weighting_metric(cls: type, key: str, value: float) -> Callable[[], tuple[bool, str]]:
    def scenario() -> tuple[bool, str]:
        extra = {"branches": {"w": "joint"}} if cls is ModalityAwareAvg else {}
        strategy, reports = _strategy(cls, nodes=3, **extra)
        _send(strategy, 1, {"w": np.zeros(20)})
        replies = [_reply(n, {"arrays": {"w": np.full(20, float(n))}}) for n in (1, 2)]
        arrays, _ = strategy.aggregate_train(
            1, [*replies, _reply(HOSTILE, {"arrays": {"w": np.full(20, 50.0)}}, **{key: value})]
        )
        ok = reports[1]["dropped_replies"] == 1 and np.allclose(arrays["w"].numpy(), 1.5)
        return ok, "dropped; the two honest replies aggregate alone"

    return scenario


def evaluate_replies() -> tuple[bool, str]:
    """Evaluate replies with zero, negative and huge counts, and mismatched keys, beside two honest ones."""
    strategy, _ = _strategy(nodes=3)
    honest = [_eval(1, accuracy=0.6), _eval(2, accuracy=0.8)]  # with the extra-key reply's 0.7: mean 0.7
    hostile = [
        _eval(3, **{"num-examples": 0}),
        _eval(4, **{"num-examples": -5}),
        _eval(5, **{"num-examples": 1e308}),
        _eval(6, accuracy=math.inf),
        reply_from(8, RecordDict({"metrics": MetricRecord({"num-examples": 10})}), "evaluate"),  # keys missing
        reply_from(9, Error(code=0, reason="crashed"), "evaluate"),
    ]
    extra = _eval(7, accuracy=0.7, surprise=1.0)  # an extra key: left out, the reply counts
    try:
        FedAvg().aggregate_evaluate(1, [*honest, *hostile, extra])
        bare = "bare FedAvg runs"
    except Exception as err:  # noqa: BLE001  what the run would have died of
        bare = f"bare FedAvg: run ends ({type(err).__name__})"
    metrics = strategy.aggregate_evaluate(1, [*honest, *hostile, extra])
    ok = metrics is not None and "surprise" not in metrics and math.isclose(float(metrics["accuracy"]), 0.7)
    return ok, f"{len(hostile)} dropped, the extra key left out; mean accuracy of the 3 sound ones; {bare}"


def _eval(node: int, **metrics: float) -> Message:
    base = {"num-examples": 10, "accuracy": 0.7, "auroc": 0.7, "f1_macro": 0.6, "loss": 0.6}
    return reply_from(node, RecordDict({"metrics": MetricRecord({**base, **metrics})}), "evaluate")


def scaffold_colluder() -> tuple[bool, str]:
    """A SCAFFOLD client sends a huge control-variate delta, the same direction, for 5 rounds."""
    strategy, reports = _strategy(Scaffold, nodes=3)
    w = {"w": np.zeros(20)}
    for rnd in range(1, 6):
        _send(strategy, rnd, w)
        rng = np.random.default_rng(rnd)
        honest = [{"arrays": w, CV_DELTA: {"w": 0.01 * rng.normal(size=20)}} for _ in (1, 2)]
        replies = [_reply(n, h) for n, h in zip((1, 2), honest, strict=True)]
        replies.append(_reply(HOSTILE, {"arrays": w, CV_DELTA: {"w": np.full(20, 1e6)}}))
        strategy.aggregate_train(rnd, replies)
    c_norm = float(np.linalg.norm(strategy.c["w"]))
    bound = 5 * 3 * 0.01 * math.sqrt(20) * 2  # 5 rounds, at most 3x the honest median norm each (with slack)
    return c_norm < bound and len(reports) == 5, f"deltas clipped; |c| = {c_norm:.3f} after 5 rounds (< {bound:.2f})"


SCENARIOS: dict[str, Callable[[], tuple[bool, str]]] = {
    "one reversed 100x update, 10^9 claimed, among 10": reversed_update_among_ten,
    "two clients claiming num-examples=1e308": two_clients_at_1e308,
    **{
        f"{key}={value} ({cls.__name__})": bad_weighting_metric(cls, key, value)
        for cls, key in ((PerformanceWeightedAvg, "val_accuracy"), (ModalityAwareAvg, "n_both"))
        for value in (math.nan, math.inf, 1e308)
    },
    "evaluate: counts 0/-5/1e308, inf, extra and missing keys": evaluate_replies,
    "SCAFFOLD colluder, 5 rounds": scaffold_colluder,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_server_survives_and_the_honest_clients_keep_the_model(name):
    ok, what = SCENARIOS[name]()
    assert ok, what


def test_a_client_error_reason_cannot_forge_log_lines(caplog):
    strategy, _ = _strategy(nodes=2)
    _send(strategy, 1, {"w": np.zeros(20)})
    forged = "boom\nINFO fedmemes: round 1: all good\x1b[2K\x1b[31m"
    with caplog.at_level(logging.WARNING, logger="fedmemes"):
        strategy.aggregate_train(1, [_reply(1, {"arrays": {"w": np.ones(20)}}), reply_from(HOSTILE, Error(0, forged))])
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "boom\\nINFO fedmemes" in text and "\\x1b[31m" in text
    assert "\x1b" not in text and all("all good" not in line or "boom" in line for line in text.splitlines())


def test_the_evaluate_keys_the_server_expects_are_what_the_client_sends():
    sent = set(classification_metrics(np.array([0.2, 0.8]), np.array([0, 1]), 0.5)) - {"n"}  # client_app.evaluate
    assert sent == set(EVALUATE_METRICS)


def scenario_table() -> str:
    """Return the scenarios' lines for the fuzz table."""
    lines = [f"{'scenario':<58} outcome"]
    for name, scenario in SCENARIOS.items():
        ok, what = scenario()
        lines.append(f"{name:<58} {'survived' if ok else 'FAILED'}: {what}")
    return "\n".join(lines)
