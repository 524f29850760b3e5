"""Engine tests: training learns, metrics are computed on probabilities."""

import math

import numpy as np
import torch
from torch.utils.data import TensorDataset

from fedmemes.federation import engine
from fedmemes.models.early_fusion import EarlyFusion


class _FakeEncoder:
    dim = 8

    def identity(self) -> str:
        return "fake"


def _xor_data(n: int, seed: int) -> TensorDataset:
    # label = (text concept) XOR (image concept): only a model using both can learn it.
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 2, (n,), generator=g)
    v = torch.randint(0, 2, (n,), generator=g)
    text = torch.randn(n, 8, generator=g) * 0.3
    text[:, 0] += 2 * t  # the concept is a direction, as in sentence-embedding space
    image = torch.zeros(n, 3, 16, 16, dtype=torch.uint8)
    image[:, 0] = (v * 200)[:, None, None].to(torch.uint8)
    image[:, 2] = ((1 - v) * 200)[:, None, None].to(torch.uint8)
    return TensorDataset(text, image, torch.ones(n, 2), t ^ v)


def test_train_learns_xor_beyond_chance():
    torch.manual_seed(0)
    model = EarlyFusion(_FakeEncoder(), text_hidden_dim=16, image_output_dim=16, fusion_output_dim=16, image_width=8)
    device = torch.device("cpu")
    before = engine.evaluate(model, _xor_data(200, 1), 64, device)
    stats = engine.train(model, _xor_data(400, 0), epochs=8, lr=3e-3, batch_size=32, device=device)
    after = engine.evaluate(model, _xor_data(200, 1), 64, device)
    assert stats["train_loss"] < 0.5
    assert after["auroc"] > 0.95 and after["auroc"] > before["auroc"] + 0.2
    assert after["n"] == 200


def test_proximal_term_keeps_weights_close():
    torch.manual_seed(0)
    start = EarlyFusion(_FakeEncoder(), 16, 16, 16, image_width=8)
    drift = {}
    for mu in (0.0, 10.0):
        model = EarlyFusion(_FakeEncoder(), 16, 16, 16, image_width=8)
        model.load_state_dict(start.state_dict())
        engine.train(
            model, _xor_data(200, 0), epochs=3, lr=3e-3, batch_size=32, device=torch.device("cpu"), proximal_mu=mu
        )
        drift[mu] = sum(
            ((p - q) ** 2).sum().item() for p, q in zip(model.parameters(), start.parameters(), strict=True)
        )
    assert drift[10.0] < 0.5 * drift[0.0]


def test_auroc_is_on_probabilities_not_hard_labels():
    label = np.array([0, 0, 1, 1])
    prob = np.array([0.1, 0.4, 0.35, 0.45])  # all below 0.5: hard-label AUROC would be 0.5
    m = engine.classification_metrics(prob, label, 0.7)
    assert m["auroc"] == 0.75 and m["accuracy"] == 0.5 and m["n"] == 4


def test_auroc_nan_with_one_class():
    assert math.isnan(engine.classification_metrics(np.array([0.2, 0.8]), np.array([1, 1]), 0.1)["auroc"])


def test_pick_device_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert engine.pick_device("auto").type == expected
    assert engine.pick_device("cpu").type == "cpu"


def test_max_steps_caps_local_batches_and_the_optimizer_is_pluggable():
    steps = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    model = EarlyFusion(_FakeEncoder(), 16, 16, 16, image_width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = engine.train(
        model,
        _xor_data(200, 0),
        epochs=3,
        lr=0.1,
        batch_size=32,
        device=torch.device("cpu"),
        optimizer=CountingSGD,
        max_steps=4,
    )
    assert len(steps) == 4  # 7 batches an epoch, 3 epochs: stopped after 4 in all
    assert stats["train_loss"] > 0.0 and 0.0 <= stats["train_accuracy"] <= 1.0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    steps.clear()
    engine.train(
        model, _xor_data(200, 0), epochs=2, lr=0.1, batch_size=32, device=torch.device("cpu"), optimizer=CountingSGD
    )
    assert len(steps) == 14  # no cap: every batch of every epoch
