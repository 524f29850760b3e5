"""Crafted hostile train replies, each beside two honest ones, through the reply checks before FedAvg and FedMedian.

The round must go on, the model stay finite and close to the honest replies' aggregate, and each
hostile reply be counted (dropped, clipped or weight-capped) with its reason in the log.
`python tests/test_reply_fuzz.py` prints the table: kind, outcome, max |model - honest aggregate|, then the
scenarios of tests/test_reply_fuzz_scenarios.py.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, FedMedian

from fedmemes.federation.testing import StaticGrid, reply_from, server_identity
from fedmemes.strategies import with_reply_checks

pytestmark = pytest.mark.usefixtures("server_identity")  # conftest: Flower stamps messages with it
RNG = np.random.default_rng(0)
GLOBAL = {"enc.w": RNG.normal(size=(4, 3)).astype(np.float32), "head.b": RNG.normal(size=3).astype(np.float32)}
HONEST_STEP = 0.01  # honest updates: global + 0.01 * N(0, 1) per value
HOSTILE = 9  # node id of the hostile client
BASE_METRICS = {"num-examples": 10, "train_loss": 0.5, "val_accuracy": 0.5}


def _npy(values: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, values, allow_pickle=allow_pickle)
    return buf.getvalue()


def _huge_header() -> bytes:
    """An npy header declaring 10**12 float32 values: reading it must not allocate them."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)})
    return buf.getvalue()


def _step(seed: int, scale: float = HONEST_STEP) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def message(node: int, arrays: dict[str, Array] | None = None, records: dict | None = None, **metrics) -> Message:
    """A train reply: `arrays` (default: an honest-looking step) under 'arrays', metrics under 'metrics'."""
    arrays = arrays if arrays is not None else {k: Array(v) for k, v in _step(node).items()}
    content = (
        records
        if records is not None
        else {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({**BASE_METRICS, **metrics})}
    )
    return reply_from(node, RecordDict(content))


def _records(arrays_key: str = "arrays", **extra: object) -> dict:
    """HOSTILE's honest records, its arrays under `arrays_key`, with the `extra` records after them."""
    arrays = ArrayRecord({k: Array(v) for k, v in _step(HOSTILE).items()})
    return {arrays_key: arrays, "metrics": MetricRecord(BASE_METRICS), **extra}


def _with(name: str, array: Array) -> dict[str, Array]:
    return {**{k: Array(v) for k, v in _step(HOSTILE).items()}, name: array}


def _raw(data: bytes, shape=(4, 3), dtype="float32", stype="numpy.ndarray") -> Array:
    return Array(dtype=dtype, shape=shape, stype=stype, data=data)


W = GLOBAL["enc.w"]
# kind -> (expected outcome, builder of the hostile reply)
CASES: dict[str, tuple[str, Callable[[], Message]]] = {
    "payload shape != declared shape": (
        "dropped",
        lambda: message(HOSTILE, _with("enc.w", _raw(_npy(np.zeros((5, 3), np.float32))))),
    ),
    'stype="torch.Tensor"': ("dropped", lambda: message(HOSTILE, _with("enc.w", _raw(_npy(W), stype="torch.Tensor")))),
    "list-valued metric": ("dropped", lambda: message(HOSTILE, train_loss=[1.0, 2.0])),
    "ArrayRecord under another name": (
        "dropped",
        lambda: message(HOSTILE, records=_records("weights")),
    ),
    "finite huge values 1e38": (
        "clipped",
        lambda: message(HOSTILE, {k: Array(np.full_like(v, 1e38)) for k, v in GLOBAL.items()}),
    ),
    "num-examples=1e9": ("capped", lambda: message(HOSTILE, **{"num-examples": 1e9})),
    "num-examples=1e12": ("dropped", lambda: message(HOSTILE, **{"num-examples": 1e12})),
    "num-examples=1e308": ("dropped", lambda: message(HOSTILE, **{"num-examples": 1e308})),
    "val_accuracy=1e308": ("dropped", lambda: message(HOSTILE, val_accuracy=1e308)),
    "truncated npy bytes": ("dropped", lambda: message(HOSTILE, _with("enc.w", _raw(_npy(W)[:-7])))),
    "object dtype (pickle)": (
        "dropped",
        lambda: message(HOSTILE, _with("enc.w", _raw(_npy(W.astype(object), allow_pickle=True)))),
    ),
    "wrong byte order (>f4)": ("dropped", lambda: message(HOSTILE, _with("enc.w", Array(W.astype(">f4"))))),
    "empty ArrayRecord": ("dropped", lambda: message(HOSTILE, {})),
    "empty RecordDict": ("dropped", lambda: message(HOSTILE, records={})),
    "negative num-examples": ("dropped", lambda: message(HOSTILE, **{"num-examples": -5})),
    "NaN metric": ("dropped", lambda: message(HOSTILE, train_loss=math.nan)),
    # more kinds
    "padded npy bytes": ("dropped", lambda: message(HOSTILE, _with("enc.w", _raw(_npy(W) + b"\0" * 16)))),
    "declared dtype != payload": ("dropped", lambda: message(HOSTILE, _with("enc.w", _raw(_npy(W), dtype="float64")))),
    "npy header claims 1e12 values": (
        "dropped",
        lambda: message(HOSTILE, _with("enc.w", _raw(_huge_header() + W.tobytes()))),
    ),
    "not an npy payload": ("dropped", lambda: message(HOSTILE, _with("enc.w", _raw(b"\x80\x04cos\nsystem\n")))),
    "infinite tensor value": (
        "dropped",
        lambda: message(HOSTILE, _with("head.b", Array(np.array([math.inf, 0, 0], np.float32)))),
    ),
    "missing tensor": (
        "dropped",
        lambda: message(HOSTILE, {k: Array(v) for k, v in _step(HOSTILE).items() if k != "head.b"}),
    ),
    "extra tensor": ("dropped", lambda: message(HOSTILE, _with("x.w", Array(np.zeros(2, np.float32))))),
    "extra ConfigRecord": (
        "dropped",
        lambda: message(HOSTILE, records=_records(config=ConfigRecord({"x": 1}))),
    ),
    "fractional num-examples": ("dropped", lambda: message(HOSTILE, **{"num-examples": 10.5})),
    "extra metric key": ("accepted", lambda: message(HOSTILE, surprise=1.0)),  # the key is left out, not the reply
    "client error": ("dropped", lambda: reply_from(HOSTILE, Error(code=0, reason="crashed"))),
    "sign-flip update x1000": (
        "clipped",
        lambda: message(
            HOSTILE,
            {k: Array((GLOBAL[k] - 1000 * (v - GLOBAL[k])).astype(np.float32)) for k, v in _step(HOSTILE).items()},
        ),
    ),
    "1e38 values and num-examples=1e9": (
        "clipped+capped",
        lambda: message(
            HOSTILE, {k: Array(np.full_like(v, -1e38)) for k, v in GLOBAL.items()}, **{"num-examples": 1e9}
        ),
    ),
}


def _strategy(cls: type):
    reports: dict[int, dict[str, int]] = {}
    strategy = with_reply_checks(cls)(min_train_nodes=1)
    strategy.reply_report_fn = reports.__setitem__
    strategy.configure_train(
        1, ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}), ConfigRecord(), StaticGrid(1, 2, HOSTILE)
    )
    return strategy, reports


def _flat(arrays: ArrayRecord) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel().astype(np.float64) for k in GLOBAL])


def run_case(cls: type, build: Callable[[], Message]) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Aggregate two honest replies alone and beside the hostile one; return both models and the report."""
    honest, _ = _strategy(cls)
    honest_arrays, _ = honest.aggregate_train(1, [message(1), message(2)])
    strategy, reports = _strategy(cls)
    arrays, _ = strategy.aggregate_train(1, [message(1), build(), message(2)])
    return _flat(arrays), _flat(honest_arrays), reports[1]


def outcome(report: dict[str, int]) -> str:
    """Name what happened to the hostile reply."""
    parts = [
        name
        for name, key in (("dropped", "dropped_replies"), ("clipped", "clipped_replies"), ("capped", "capped_weights"))
        if report[key]
    ]
    return "+".join(parts) or "accepted"


def _honest_norm() -> float:
    return max(
        float(np.sqrt(sum(((_step(n)[k] - GLOBAL[k]).astype(np.float64) ** 2).sum() for k in GLOBAL))) for n in (1, 2)
    )


def test_at_least_twelve_kinds():
    assert len(CASES) >= 12


@pytest.mark.parametrize("cls", [FedAvg, FedMedian])
@pytest.mark.parametrize("kind", list(CASES))
def test_hostile_reply_is_counted_and_the_model_stays_near_the_honest_aggregate(kind, cls, caplog):
    expected, build = CASES[kind]
    with caplog.at_level(logging.WARNING, logger="fedmemes"):
        model, honest, report = run_case(cls, build)
    assert report["replies"] == 3 and report["kept_previous_model"] == 0  # the round went on with a new model
    assert outcome(report) == expected
    acted_on = 0 if expected == "accepted" else expected.count("+") + 1
    assert report["dropped_replies"] + report["clipped_replies"] + report["capped_weights"] == acted_on
    assert np.isfinite(model).all()
    # Bounded pull: a clipped update's norm is at most 3x the median (an honest one), its weight at most 2/n = 2/3,
    # so the model moves at most 2/3 * (3 + 1) honest update norms from the honest aggregate.
    assert np.abs(model - honest).max() <= 8 / 3 * _honest_norm()
    if expected == "dropped":
        np.testing.assert_array_equal(model, honest)  # the other replies aggregate exactly as without it
    if expected != "accepted":
        assert any(f"node {HOSTILE}" in r.getMessage() for r in caplog.records)  # the reason names the sender


def test_an_extra_metric_key_first_in_a_tie_of_two_drops_no_reply():
    # Two clients, the first with an extra key: a vote over key sets tied, and arrival order used to drop the honest
    # reply. Both are aggregated now, the extra key left out of the round's metrics.
    strategy, reports = _strategy(FedAvg)
    arrays, metrics = strategy.aggregate_train(1, [message(HOSTILE, surprise=1.0), message(1)])
    assert reports[1]["dropped_replies"] == 0 and "surprise" not in (metrics or {})
    both = {k: (_step(HOSTILE)[k].astype(np.float64) + _step(1)[k]) / 2 for k in GLOBAL}  # equal num-examples
    np.testing.assert_allclose(_flat(arrays), np.concatenate([both[k].ravel() for k in GLOBAL]), rtol=1e-6)


def test_capped_claim_holds_exactly_the_cap_of_the_round():
    model, _, _ = run_case(FedAvg, CASES["num-examples=1e9"][1])
    flat = {n: np.concatenate([_step(n)[k].ravel().astype(np.float64) for k in GLOBAL]) for n in (1, 2, HOSTILE)}
    # 3 replies, cap 2/n = 2/3: honest claims 10 + 10, the hostile one is cut to 40: weights 1/6, 1/6, 2/3
    np.testing.assert_allclose(model, flat[1] / 6 + flat[2] / 6 + 2 / 3 * flat[HOSTILE], rtol=1e-6)


def unchecked(cls: type, build: Callable[[], Message]) -> str:
    """Return what the bare strategy (no reply checks) makes of the same round: its max |diff| or the error that ends
    the run."""
    honest, _ = _strategy(cls)
    honest_model = _flat(honest.aggregate_train(1, [message(1), message(2)])[0])
    bare = cls(min_train_nodes=1)
    try:
        arrays, _ = bare.aggregate_train(1, [message(1), build(), message(2)])
        return "kept model" if arrays is None else f"{np.abs(_flat(arrays) - honest_model).max():.3g}"
    except Exception as err:  # noqa: BLE001  the run would end here
        return f"run ends: {type(err).__name__}"


def test_client_facts_are_told_under_the_sending_node():
    told: list[tuple[int, dict]] = []
    strategy, _ = _strategy(FedAvg)
    strategy.reply_facts_fn = lambda node, metrics: told.append((node, metrics))
    # Both claim partition 0; the hostile one also lies about its size: each lands under its own node id.
    strategy.aggregate_train(
        1, [message(1, partition_id=0), message(HOSTILE, partition_id=0, **{"num-examples": 10**9})]
    )
    assert [(node, m["partition_id"], m["num-examples"]) for node, m in told] == [(1, 0, 10), (HOSTILE, 0, 10**9)]


def test_a_metric_one_site_holds_back_is_not_averaged_but_stays_the_others_facts():
    told: list[tuple[int, dict]] = []
    strategy, _ = _strategy(FedAvg)
    strategy.reply_facts_fn = lambda node, metrics: told.append((node, metrics))
    # node 2's site policy keeps its member AUROCs: node 1's still reach the server's per-member spread
    _, averaged = strategy.aggregate_train(
        1, [message(1, partition_id=0, personal_auroc=0.8), message(2, partition_id=1)]
    )
    assert [(node, m.get("personal_auroc")) for node, m in told] == [(1, 0.8), (2, None)]
    assert averaged is not None and "personal_auroc" not in averaged


def fuzz_table(cls: type = FedAvg, compare: bool = False) -> str:
    """Return the table: kind, outcome, max |model - honest aggregate|, and what the bare strategy makes of it."""
    lines = [
        f"strategy: with_reply_checks({cls.__name__}); honest update L2 norm <= {_honest_norm():.3f}",
        f"{'kind':<36} {'outcome':<15} {'max|diff| vs honest':>19}   "
        f"{'bare ' + cls.__name__ + ' (no checks)' if compare else ''}",
    ]
    for kind, (_, build) in CASES.items():
        model, honest, report = run_case(cls, build)
        lines.append(
            f"{kind:<36} {outcome(report):<15} {np.abs(model - honest).max():>19.3g}   "
            f"{unchecked(cls, build) if compare else ''}"
        )
    return "\n".join(lines)


def test_print_fuzz_table(capsys):
    table = fuzz_table()
    print(table)
    # every hostile kind is acted on, except the extra metric key, whose reply counts with the key left out
    assert table.count("accepted") == 1 and table.count("\n") == len(CASES) + 1


if __name__ == "__main__":
    for name in ("fedmemes", "flwr"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with server_identity():
        for strategy_cls in (FedAvg, FedMedian):
            print(fuzz_table(strategy_cls, compare=True), end="\n\n")  # the bare strategy tries to allocate 4 TB once
        from test_reply_fuzz_scenarios import scenario_table  # colluders, 10 clients, rounds, evaluate replies

        print(scenario_table())
