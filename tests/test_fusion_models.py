"""Every fusion variant: composes, trains on mixed complete/half-missing memes, exports only what trains."""

from pathlib import Path

import pytest
import torch

import fedmemes
from fedmemes.config import build_model, load_config
from fedmemes.federation import engine
from fedmemes.models.cross_attention import CrossAttentionFusion

MODELS = sorted(p.stem for p in (Path(fedmemes.__file__).parent / "conf" / "model").glob("*.yaml"))
CAPTIONS = [
    "my neighbours never change",
    "pizza slices make no sense",
    "when tourists show up",
    "",
    "traffic jams ruin the whole weekend",
    "the interns test my patience",
]
# Complete memes, text missing, image missing: every placeholder is used in one batch.
MASK = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 1], [1, 1], [1, 0]], dtype=torch.float32)


def _batch(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    encoder = load_config_encoder(model)
    g = torch.Generator().manual_seed(seed)
    return encoder.encode(CAPTIONS), torch.rand(6, 3, 32, 32, generator=g), MASK


def load_config_encoder(model):
    # ImageOnly keeps no text encoder: the data side builds text inputs from the config's.
    return getattr(model, "text_encoder", None) or build_model(load_config("")).text_encoder


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_on_mixed_availability(name):
    torch.manual_seed(0)
    model = build_model(load_config(f"model={name}"))
    text, image, mask = _batch(model)
    logits = model(text, image, mask)
    assert logits.shape == (6, 2) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()] == []


@pytest.mark.parametrize("name", MODELS)
def test_state_round_trip_and_only_trainable_exported(name):
    cfg = load_config(f"model={name}")
    a, b = build_model(cfg), build_model(cfg)
    state = engine.trainable_state(a)
    assert set(state) == {n for n, p in a.named_parameters() if p.requires_grad}  # no frozen weights, no buffers
    assert set(a.branches()) == set(state)
    b.load_state_dict(state)
    a.eval(), b.eval()
    text, image, mask = _batch(a)
    assert torch.equal(a(text, image, mask), b(text, image, mask))
    with pytest.raises(RuntimeError, match="does not fit"):
        b.load_state_dict({k: v for k, v in list(state.items())[1:]})


@pytest.mark.parametrize("name", [m for m in MODELS if m != "text_only"])
def test_missing_image_is_ignored(name):
    model = build_model(load_config(f"model={name}")).eval()
    text, image, _ = _batch(model)
    no_image = torch.tensor([[1.0, 0.0]] * 6)
    assert torch.equal(model(text, image, no_image), model(text, torch.rand_like(image), no_image))
    assert not torch.equal(model(text, image, torch.ones(6, 2)), model(text, torch.rand_like(image), torch.ones(6, 2)))


@pytest.mark.parametrize("direction", ["both", "text_to_image", "image_to_text"])
def test_cross_attention_stays_within_each_meme(direction):
    torch.manual_seed(0)
    model = build_model(load_config(f"model=cross_attention model.direction={direction}")).eval()
    assert isinstance(model, CrossAttentionFusion)
    text, image, mask = _batch(model)
    out = model(text, image, mask)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    # Permuting the batch permutes the outputs and nothing else.
    torch.testing.assert_close(model(text[perm], image[perm], mask[perm]), out[perm], rtol=1e-5, atol=1e-6)
    changed = image.clone()
    changed[0] = torch.rand(3, 32, 32)
    other = model(text, changed, mask)
    assert not torch.allclose(other[0], out[0]) and torch.allclose(other[1:], out[1:], atol=1e-6)


def test_cross_attention_refuses_pooled_text():
    with pytest.raises(Exception, match="output=tokens"):  # hydra wraps the ValueError
        build_model(load_config("model=cross_attention model/text_encoder=frozen"))


def test_modality_dropout_only_in_training():
    model = build_model(load_config("model.modality_dropout=0.5"))
    mask = torch.ones(4000, 2)
    torch.manual_seed(0)
    dropped = model.train().available(mask)
    assert dropped.sum(1).min() == 1  # never both modalities
    assert abs((dropped.sum(1) == 1).float().mean().item() - 0.5) < 0.05
    assert abs((dropped[:, 0] == 0).float().mean().item() - 0.25) < 0.03  # text and image equally often
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(100, 1)
    assert torch.equal(model.available(half), half)  # a half-missing meme keeps what it has
    assert torch.equal(model.eval().available(mask), mask)
    with pytest.raises(Exception, match="modality_dropout"):
        build_model(load_config("model.modality_dropout=1.5"))
