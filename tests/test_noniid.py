"""Non-IID remedies on hand-built replies and tiny problems: SCAFFOLD, FedDyn, server lr, FedLC."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from test_strategies import GLOBAL, _np, reply
from torch import nn

from fedmemes.config import build_strategy, load_config
from fedmemes.federation.client_corrections import (
    CV_DELTA,
    FEDDYN_ALPHA,
    FEDDYN_STATE,
    SCAFFOLD_C,
    SCAFFOLD_STATE,
    local_setup,
)
from fedmemes.federation.local_objectives import (
    CrossEntropy,
    FedDynCorrection,
    FedLCLoss,
    ScaffoldCorrection,
)
from fedmemes.federation.testing import StaticGrid
from fedmemes.strategies import with_reply_checks
from fedmemes.strategies.feddyn import FedDyn
from fedmemes.strategies.scaffold import Scaffold
from fedmemes.strategies.server_lr import ServerLRFedAvg
from fedmemes.strategies.update_bounds import UpdateBounds

pytestmark = pytest.mark.usefixtures("server_identity")  # conftest: Flower stamps messages with it


def _global(value: float = 0.0) -> ArrayRecord:
    return ArrayRecord({k: Array(np.full_like(v, value)) for k, v in GLOBAL.items()})


def scaffold_reply(node: int, value: float, delta: float, n: int = 10) -> Message:
    """A SCAFFOLD train reply: model tensors = value, control-variate delta = delta."""
    msg = reply(node, value, **{"num-examples": n})
    msg.content[CV_DELTA] = ArrayRecord({k: Array(np.full_like(v, delta)) for k, v in GLOBAL.items()})
    return msg


# --- FedLC --------------------------------------------------------------------------------


def test_fedlc_loss_equals_the_formula():
    logits, label = torch.tensor([[1.0, 2.0], [0.5, -1.0], [0.0, 0.0]]), torch.tensor([1, 0, 1])
    counts, tau = [16, 1], 2.0
    loss = FedLCLoss(counts, tau=tau)(logits, label)
    # by hand: z_y - tau * n_y^(-1/4) with n = (16, 1): offsets (1.0, 2.0)
    expected = 0.0
    for z, y in zip(logits.tolist(), label.tolist(), strict=True):
        adj = [z[0] - 2.0 * 16**-0.25, z[1] - 2.0 * 1**-0.25]
        expected += -(adj[y] - math.log(math.exp(adj[0]) + math.exp(adj[1])))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_fedlc_on_a_sigmoid_head_is_the_two_logit_case():
    z, label, counts = torch.tensor([[0.3], [-2.0], [1.5]]), torch.tensor([1, 0, 0]), [81, 1]
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert FedLCLoss(counts, 1.5)(z, label).item() == pytest.approx(FedLCLoss(counts, 1.5)(two, label).item(), rel=1e-6)


def test_fedlc_with_tau_zero_is_cross_entropy_and_an_absent_label_gets_the_largest_offset():
    logits, label = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 1])
    assert FedLCLoss([3, 0], tau=0.0)(logits, label).item() == pytest.approx(F.cross_entropy(logits, label).item())
    assert FedLCLoss([3, 0], tau=1.0).offset.tolist() == pytest.approx([3**-0.25, 1.0])
    assert CrossEntropy([3, 0])(logits, label).item() == pytest.approx(F.cross_entropy(logits, label).item())


# --- client side: SCAFFOLD and FedDyn on a quadratic ----------------------------------------

A, B = (1.0, 10.0), (5.0, -1.0)  # client i minimises a_i/2 (w - b_i)^2; the mean's optimum is below
OPTIMUM = sum(a * b for a, b in zip(A, B, strict=True)) / sum(A)


def _federate(method: str, rounds: int, steps: int = 20, lr: float = 0.05, alpha: float = 0.5) -> float:
    """Two clients, K local SGD steps, the server averages (plus the method's own server rule)."""
    w, c, h = torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1)
    state: list = [None, None]
    for _ in range(rounds):
        outs, deltas = [], []
        for i in range(2):
            model = nn.Linear(1, 1, bias=False)
            with torch.no_grad():
                model.weight.copy_(w)
            hook: ScaffoldCorrection | FedDynCorrection | None = None
            if method == "scaffold":
                hook = ScaffoldCorrection(model, {"weight": c}, state[i])
            elif method == "feddyn":
                hook = FedDynCorrection(model, alpha, state[i])
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            for _ in range(steps):
                opt.zero_grad()
                (A[i] / 2 * (model.weight - B[i]) ** 2).sum().backward()
                if hook:
                    hook(model)
                opt.step()
            outs.append(model.weight.detach().clone())
            if method == "scaffold":
                deltas.append(hook.delta()["weight"])
                state[i] = hook.new_state()
            elif method == "feddyn":
                state[i] = hook.new_state(model)
        avg = sum(outs) / 2
        if method == "scaffold":
            c = c + sum(deltas) / 2
        if method == "feddyn":
            h = h - alpha * (avg - w)
            avg = avg - h / alpha
        w = avg
    return float(w)


def test_scaffold_and_feddyn_remove_the_drift_fedavg_keeps():
    assert abs(_federate("fedavg", 60) - OPTIMUM) > 1.0  # local optima pull FedAvg off the mean's optimum
    assert _federate("scaffold", 60) == pytest.approx(OPTIMUM, abs=1e-4)
    assert _federate("feddyn", 200) == pytest.approx(OPTIMUM, abs=1e-2)


def test_scaffold_control_variate_is_the_mean_raw_gradient_and_corrects_each_step():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    corr = ScaffoldCorrection(model, {"weight": torch.full((1, 1), 0.5)}, {"weight": torch.full((1, 1), 0.2)})
    raw = []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model.weight**2).sum().backward()  # gradient 2w
        raw.append(float(model.weight.grad))
        corr(model)
        assert float(model.weight.grad) == pytest.approx(raw[-1] + 0.3)  # + (c - c_i)
        opt.step()
    assert float(corr.new_state()["weight"]) == pytest.approx(sum(raw) / 3)
    assert float(corr.delta()["weight"]) == pytest.approx(sum(raw) / 3 - 0.2)


def test_feddyn_state_update_is_the_formula():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    dyn = FedDynCorrection(model, 0.1, {"weight": torch.tensor([[0.5, 0.0]])})
    with torch.no_grad():
        model.weight.add_(torch.tensor([[2.0, 4.0]]))
    assert dyn.new_state(model)["weight"].flatten().tolist() == pytest.approx([0.5 - 0.2, -0.4])


def test_local_setup_keeps_control_variates_in_the_node_state_across_rounds():
    model, state = nn.Linear(2, 1), RecordDict()
    c = ArrayRecord({k: torch.zeros_like(v) for k, v in model.state_dict().items()})
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), SCAFFOLD_C: c, "config": ConfigRecord({FEDDYN_ALPHA: 0.1})}
    )
    setup = local_setup(content, state, model, [3, 5])
    assert setup.loss_fn is None and setup.grad_hook is not None
    model(torch.ones(4, 2)).sum().backward()
    setup.grad_hook(model)
    extra = setup.finish(model)
    assert set(extra) == {CV_DELTA} and set(state.array_records) == {SCAFFOLD_STATE, FEDDYN_STATE}
    assert extra[CV_DELTA]["weight"].numpy().tolist() == [[4.0, 4.0]]  # one step's raw gradient - old c_i (0)
    again = local_setup(content, state, model, [3, 5])  # next round: c_i comes back from the state
    assert again.grad_hook is not None
    model.zero_grad()
    model(torch.ones(4, 2)).sum().backward()
    again.grad_hook(model)
    assert model.weight.grad.tolist() == [[0.0, 0.0]]  # 4 + (c - c_i) = 4 + (0 - 4); FedDyn adds 0 at the start


def test_loss_group_builds_fedlc_with_the_client_label_counts():
    cfg = load_config("loss=fedlc loss.tau=2.0")
    setup = local_setup(RecordDict({"config": ConfigRecord({})}), RecordDict(), nn.Linear(2, 2), [16, 1], cfg.loss)
    assert isinstance(setup.loss_fn, FedLCLoss) and setup.loss_fn.offset.tolist() == pytest.approx([1.0, 2.0])
    assert local_setup(RecordDict(), RecordDict(), nn.Linear(2, 2), [1, 1], load_config("").loss).loss_fn is None


# --- server side ----------------------------------------------------------------------------


def test_server_lr_steps_from_the_global_model_along_the_average():
    strategy = ServerLRFedAvg(server_lr=2.0)
    strategy.configure_train(1, _global(1.0), ConfigRecord(), StaticGrid(1, 2, 3))
    arrays, _ = strategy.aggregate_train(1, [reply(1, 2.0), reply(2, 4.0)])
    assert all(np.allclose(v, 1.0 + 2.0 * (3.0 - 1.0)) for v in _np(arrays).values())
    with pytest.raises(ValueError, match="server_lr"):
        ServerLRFedAvg(server_lr=0.0)


def test_scaffold_sends_c_and_folds_the_deltas_into_it():
    strategy = with_reply_checks(Scaffold)()
    # the plain SCAFFOLD rule; bounds are tested in test_update_bounds
    strategy.update_bounds = UpdateBounds.parse(None, None)
    messages = list(strategy.configure_train(1, _global(0.0), ConfigRecord(), StaticGrid(1, 2, 3)))
    assert len(messages) == 3 and all(np.allclose(_np(m.content[SCAFFOLD_C])["t.w"], 0.0) for m in messages)
    arrays, _ = strategy.aggregate_train(1, [scaffold_reply(1, 1.0, 0.3, n=10), scaffold_reply(2, 4.0, 0.9, n=30)])
    assert np.allclose(_np(arrays)["t.w"], (1.0 * 10 + 4.0 * 30) / 40)  # the model: FedAvg's weighted mean
    assert np.allclose(strategy.c["t.w"], 2 / 3 * (0.3 + 0.9) / 2)  # c += |S|/N * mean(delta), N = 3 nodes
    sent = list(strategy.configure_train(2, arrays, ConfigRecord(), StaticGrid(1, 2, 3)))
    assert np.allclose(_np(sent[0].content[SCAFFOLD_C])["h.w"], 0.4)
    assert strategy.state_dict()["c"] is strategy.c


def test_scaffold_reply_checks_want_exactly_the_named_records():
    strategy = with_reply_checks(Scaffold)()
    strategy.configure_train(1, _global(0.0), ConfigRecord(), StaticGrid(1, 2, 3))
    no_delta = reply(3, 1.0)
    bad_delta = scaffold_reply(4, 1.0, math.nan)
    sound, reasons = strategy.filter_replies(1, [scaffold_reply(1, 1.0, 0.1), no_delta, bad_delta])
    assert [r.node for r in sound] == [1]
    assert "cv_delta" in reasons[0] and "non-finite" in reasons[1]
    plain = with_reply_checks(FedAvg)()  # a strategy that names no extra records still wants exactly one
    plain.configure_train(1, _global(0.0), ConfigRecord(), StaticGrid(1, 2, 3))
    assert plain.filter_replies(1, [scaffold_reply(1, 1.0, 0.1)])[0] == []


def test_feddyn_sends_alpha_and_applies_h():
    strategy = with_reply_checks(FedDyn)(alpha=0.5)
    messages = list(strategy.configure_train(1, _global(1.0), ConfigRecord({"lr": 0.1}), StaticGrid(1, 2, 3)))
    assert messages[0].content["config"][FEDDYN_ALPHA] == 0.5 and messages[0].content["config"]["lr"] == 0.1
    arrays, _ = strategy.aggregate_train(1, [reply(1, 2.0), reply(2, 4.0)])
    h = -0.5 * (2 / 3) * (3.0 - 1.0)  # h -= alpha * |S|/N * (mean - w); N = 3 nodes
    assert np.allclose(strategy.h["i.w"], h)
    assert np.allclose(_np(arrays)["i.w"], 3.0 - h / 0.5)
    with pytest.raises(ValueError, match="alpha"):
        FedDyn(alpha=0.0)


@pytest.mark.parametrize("name,cls", [("scaffold", Scaffold), ("feddyn", FedDyn), ("fedavg_slr", ServerLRFedAvg)])
def test_strategy_configs_build_with_reply_checks(name, cls):
    strategy = build_strategy(load_config(f"strategy={name}"))
    assert isinstance(strategy, cls) and hasattr(strategy, "filter_replies")


def test_label_skew_preset_composes():
    cfg = load_config("experiment=label_skew")
    assert cfg.num_clients == 6 and cfg.partition.alpha == 0.3
