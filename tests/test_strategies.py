"""Custom strategies and reply checks on hand-built replies, with exact expected numbers."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, Krum

from fedmemes.config import build_strategy, load_config
from fedmemes.federation.testing import StaticGrid, reply_from
from fedmemes.strategies import ModalityAwareAvg, PerformanceWeightedAvg, with_reply_checks
from fedmemes.strategies.performance_weighted import performance_weights
from fedmemes.strategies.update_bounds import UpdateBounds

GLOBAL = {"t.w": np.zeros(2, np.float32), "i.w": np.zeros(2, np.float32), "h.w": np.zeros(2, np.float32)}
BRANCHES = {"t.w": "text", "i.w": "image", "h.w": "joint"}


pytestmark = pytest.mark.usefixtures("server_identity")  # conftest: Flower stamps messages with it


def reply(node: int, value: float | dict[str, np.ndarray] = 0.0, **metrics) -> Message:
    """A train reply: every tensor filled with `value` (or the given tensors) plus metrics."""
    arrays = value if isinstance(value, dict) else {k: np.full_like(v, value) for k, v in GLOBAL.items()}
    base = {"num-examples": 10, "train_loss": 0.5, "val_accuracy": 0.5, "n_text": 10, "n_image": 10, "n_both": 10}
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": MetricRecord({**base, **metrics})}
    )
    return reply_from(node, content)


def configured(strategy):
    """Send the global model once, so the strategy knows the round's reference arrays."""
    strategy.configure_train(
        1, ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()}), ConfigRecord(), StaticGrid(1, 2, 3)
    )
    return strategy


def _np(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}


# --- performance_weighted ---------------------------------------------------------------


def test_performance_weights_exact():
    # alpha=0.5: 0.5*[0.9, 0.5] + 0.5*[30/40, 10/40] = [0.825, 0.375] -> /1.2
    w = performance_weights([0.9, 0.5], [30, 10], alpha=0.5)
    assert w == pytest.approx([0.825 / 1.2, 0.375 / 1.2])
    assert performance_weights([0.0, 0.0], [30, 10], alpha=1.0) == pytest.approx([0.75, 0.25])  # no signal: data share


def test_performance_weighted_averages_with_those_weights():
    strategy = configured(PerformanceWeightedAvg(alpha=0.5, min_train_nodes=2))
    arrays, metrics = strategy.aggregate_train(
        1,
        [
            reply(1, 1.0, **{"num-examples": 30, "val_accuracy": 0.9}),
            reply(2, 5.0, **{"num-examples": 10, "val_accuracy": 0.5}),
        ],
    )
    expected = 1.0 * 0.825 / 1.2 + 5.0 * 0.375 / 1.2  # 2.25
    for value in _np(arrays).values():
        np.testing.assert_allclose(value, [expected, expected], rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx(0.5)


def test_performance_weighted_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        PerformanceWeightedAvg(alpha=1.5)


# --- modality_aware -------------------------------------------------------------------


def test_modality_aware_averages_each_block_over_its_clients():
    strategy = configured(ModalityAwareAvg(branches=BRANCHES, min_train_nodes=2))
    # client 1: 8 memes with text, 2 with an image, 2 with both; client 2: text only (no images)
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, 1.0, n_text=8, n_image=2, n_both=2), reply(2, 4.0, n_text=2, n_image=0, n_both=0)]
    )
    out = _np(arrays)
    np.testing.assert_allclose(out["t.w"], [1.0 * 0.8 + 4.0 * 0.2] * 2, rtol=1e-6)  # 1.6
    np.testing.assert_allclose(out["i.w"], [1.0, 1.0])  # only client 1 trained the image branch
    np.testing.assert_allclose(out["h.w"], [1.0, 1.0])


def test_modality_aware_keeps_a_block_nobody_trained():
    strategy = configured(ModalityAwareAvg(branches=BRANCHES, min_train_nodes=2))
    arrays, _ = strategy.aggregate_train(1, [reply(1, 3.0, n_image=0, n_both=0), reply(2, 5.0, n_image=0, n_both=0)])
    out = _np(arrays)
    np.testing.assert_allclose(out["t.w"], [4.0, 4.0])
    np.testing.assert_array_equal(out["i.w"], GLOBAL["i.w"])
    np.testing.assert_array_equal(out["h.w"], GLOBAL["h.w"])


def test_modality_aware_needs_the_model_branch_map():
    strategy = configured(ModalityAwareAvg(min_train_nodes=1))
    with pytest.raises(ValueError, match="branch map"):
        strategy.aggregate_train(1, [reply(1, 1.0)])


def test_server_passes_the_model_branch_map():
    from fedmemes.config import build_model

    cfg = load_config("strategy=modality_aware")
    model = build_model(cfg)
    strategy = build_strategy(cfg, branches=model.branches())
    assert set(strategy.branches.values()) == {"text", "image", "joint"}
    assert set(strategy.branches) == set(model.state_dict())


# --- reply checks -----------------------------------------------------------------------


def _checked(cls=FedAvg, min_valid_replies=1, **kwargs):
    reports = {}
    strategy = with_reply_checks(cls)(min_train_nodes=1, **kwargs)
    strategy.reply_report_fn, strategy.min_valid_replies = reports.__setitem__, min_valid_replies
    return configured(strategy), reports


BAD_REPLIES = {
    "non-finite": lambda: reply(9, {**GLOBAL, "h.w": np.array([math.nan, 0.0], np.float32)}),
    "infinite": lambda: reply(9, {**GLOBAL, "h.w": np.array([math.inf, 0.0], np.float32)}),
    "missing tensor": lambda: reply(9, {k: v for k, v in GLOBAL.items() if k != "h.w"}),
    "extra tensor": lambda: reply(9, {**GLOBAL, "x.w": np.zeros(2, np.float32)}),
    "wrong shape": lambda: reply(9, {**GLOBAL, "h.w": np.zeros(3, np.float32)}),
    "wrong dtype": lambda: reply(9, {**GLOBAL, "h.w": np.zeros(2, np.float64)}),
    "negative num-examples": lambda: reply(9, **{"num-examples": -5}),
    "non-finite metric": lambda: reply(9, train_loss=math.nan),
}  # an extra metric key is no reason to drop a reply: tests/test_reply_fuzz.py


@pytest.mark.parametrize("cls", [FedAvg, FedAdam])
def test_local_keys_are_not_expected_back_and_keep_their_global_value(cls):
    """personalization=local_head: replies lack the head; the strategy averages the rest, the head stays as it was."""
    strategy, reports = _checked(cls)
    strategy.local_keys = frozenset({"h.w"})

    def shared(node: int, value: float) -> Message:
        return reply(node, {k: np.full(2, value, np.float32) for k in ("t.w", "i.w")})

    arrays, _ = strategy.aggregate_train(1, [shared(1, 2.0), shared(2, 4.0), reply(9, 1.0)])
    out = _np(arrays)
    assert list(out) == list(GLOBAL) and np.array_equal(out["h.w"], GLOBAL["h.w"])  # exactly the global value
    if cls is FedAvg:
        np.testing.assert_allclose(out["t.w"], [3.0, 3.0])
    else:  # FedAdam steps toward the average: the same sign, a step of about its learning rate
        assert (out["t.w"] > 0).all() and (out["i.w"] > 0).all()
    assert reports[1]["dropped_replies"] == 1 and reports[1]["dropped"][0].startswith("node 9: ")  # sent its head


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_bad_reply_is_dropped_and_counted(case):
    strategy, reports = _checked()
    arrays, _ = strategy.aggregate_train(1, [reply(1, 2.0), reply(2, 4.0), BAD_REPLIES[case]()])
    for value in _np(arrays).values():
        np.testing.assert_allclose(value, [3.0, 3.0])  # the two sound replies, equal weights
    dropped = reports[1].pop("dropped")
    assert len(dropped) == 1 and dropped[0].startswith("node 9: ")  # the reason names the node
    assert reports[1] == {
        "replies": 3,
        "dropped_replies": 1,
        "clipped_replies": 0,
        "capped_weights": 0,
        "kept_previous_model": 0,
    }


def test_missing_num_examples_is_dropped():
    bad = reply(9)
    del bad.content["metrics"]["num-examples"]
    strategy, reports = _checked()
    sound, reasons = strategy.filter_replies(1, [reply(1), bad])
    assert len(sound) == 1 and "num-examples' is missing" in reasons[0]


def test_error_reply_is_dropped():
    error = reply_from(7, Error(code=0, reason="client crashed"))
    strategy, reports = _checked()
    strategy.aggregate_train(1, [reply(1, 2.0), error])
    assert reports[1]["dropped_replies"] == 1


def test_too_few_sound_replies_keep_the_previous_model():
    strategy, reports = _checked(min_valid_replies=2)
    arrays, _ = strategy.aggregate_train(1, [reply(1, 2.0), BAD_REPLIES["non-finite"]()])
    for key, value in _np(arrays).items():
        np.testing.assert_array_equal(value, GLOBAL[key])
    assert len(reports[1].pop("dropped")) == 1
    assert reports[1] == {
        "replies": 2,
        "dropped_replies": 1,
        "clipped_replies": 0,
        "capped_weights": 0,
        "kept_previous_model": 1,
    }


@pytest.mark.parametrize("cls", [FedMedian, Krum, PerformanceWeightedAvg])
def test_checks_work_for_other_strategies(cls):
    strategy, reports = _checked(cls)
    arrays, _ = strategy.aggregate_train(1, [reply(1, 2.0), reply(2, 2.0), BAD_REPLIES["wrong shape"]()])
    np.testing.assert_allclose(_np(arrays)["h.w"], [2.0, 2.0])
    assert isinstance(strategy, cls) and type(strategy).__name__ == cls.__name__


def test_checks_sit_in_front_of_central_dp():
    overrides = "strategy=dp_fixed server.strategy.noise_multiplier=0.0 server.strategy.min_valid_replies=1"
    strategy = build_strategy(load_config(overrides))
    configured(strategy)
    arrays, _ = strategy.aggregate_train(1, [reply(1, 1.0), BAD_REPLIES["non-finite"]()])
    assert np.isfinite(np.concatenate([v.ravel() for v in _np(arrays).values()])).all()
    np.testing.assert_allclose(_np(arrays)["h.w"], [1.0, 1.0], rtol=1e-5)  # update norm sqrt(6) < clipping_norm 5


# --- config -----------------------------------------------------------------------------


def test_seed_keys_without_a_flower_142_name_are_rejected_with_the_new_place():
    with pytest.raises(ValueError, match="train_metrics_aggr_fn"):
        build_strategy(load_config("+server.strategy.fit_metrics_aggregation_fn=null"))
    with pytest.raises(ValueError, match="lr=.*num_epochs="):
        build_strategy(load_config("+server.strategy.on_fit_config_fn=null"))


def test_unknown_strategy_key_names_the_allowed_ones():
    with pytest.raises(ValueError, match="takes no \\['alpah'\\].*alpha"):
        build_strategy(load_config("strategy=performance_weighted +server.strategy.alpah=0.5"))


def test_min_valid_replies_is_the_checks_setting():
    strategy = build_strategy(load_config("strategy=krum server.strategy.min_valid_replies=3"))
    assert strategy.min_valid_replies == 3 and strategy.num_malicious_nodes == 1


def test_aggregate_keeps_the_global_dtypes():
    from fedmemes.strategies.validation import _as_reference_dtypes

    strategy, _ = _checked(PerformanceWeightedAvg)
    f64 = ArrayRecord({k: Array(v.astype(np.float64)) for k, v in GLOBAL.items()})
    assert {a.dtype for a in _as_reference_dtypes(f64, strategy._reply_reference).values()} == {"float32"}


def test_dp_wraps_the_chosen_inner_strategy():
    strategy = build_strategy(load_config("strategy=dp_adaptive strategy@server.strategy.strategy=fedprox"))
    assert type(strategy.strategy).__name__ == "FedProx" and strategy.strategy.proximal_mu == 0.01


def test_modality_counts_are_capped_like_num_examples():
    strategy, reports = _checked(ModalityAwareAvg, branches=BRANCHES)
    strategy.update_bounds = UpdateBounds.parse(max_client_weight=0.5)  # a fixed share: with two clients, equal says
    arrays, _ = strategy.aggregate_train(1, [reply(1, 1.0), reply(2, 2.0, n_text=10**6)])
    np.testing.assert_allclose(_np(arrays)["t.w"], [1.5, 1.5])  # the text block is an equal say, not 2.0
    assert reports[1]["capped_weights"] == 1 and reports[1]["clipped_replies"] == 0


def test_outsized_update_is_clipped_onto_three_times_the_median():
    strategy, reports = _checked()
    arrays, _ = strategy.aggregate_train(1, [reply(1, 1.0), reply(2, 1.0), reply(3, 100.0)])
    # norms sqrt(6) * [1, 1, 100]: the third is scaled to 3 * sqrt(6), i.e. 3.0 per value; mean (1 + 1 + 3) / 3
    np.testing.assert_allclose(_np(arrays)["h.w"], [5 / 3, 5 / 3], rtol=1e-6)
    assert reports[1]["clipped_replies"] == 1
