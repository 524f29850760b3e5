"""Model tests: shapes, backward pass, what gets exported, the frozen text encoder."""

import torch

from fedmemes.config import build_model, load_config
from fedmemes.federation import engine
from fedmemes.models.components.image_encoder import SmallCNN
from fedmemes.models.components.text_encoder import FrozenTextEncoder
from fedmemes.models.early_fusion import EarlyFusion


def test_minilm_encodes_meaningfully():
    enc = FrozenTextEncoder()
    vecs = enc.encode(["my neighbours moved in", "my coworkers moved in", "the pizza is cold"])
    assert vecs.shape == (3, 384) and enc.dim == 384
    cos = torch.nn.functional.cosine_similarity
    # Paraphrases sit closer than unrelated captions: the weights are real, not random.
    assert cos(vecs[0], vecs[1], dim=0) > cos(vecs[0], vecs[2], dim=0) + 0.1


def test_encoder_identity_depends_on_settings():
    assert FrozenTextEncoder(max_length=64).identity() != FrozenTextEncoder(max_length=32).identity()
    assert FrozenTextEncoder().identity() == FrozenTextEncoder().identity()


def test_cnn_shape():
    assert SmallCNN(out_dim=40)(torch.rand(5, 3, 32, 32)).shape == (5, 40)


def test_fusion_forward_backward_and_export():
    model = build_model(load_config("model.text_hidden_dim=64 model.image_output_dim=32 model.fusion_output_dim=16"))
    assert isinstance(model, EarlyFusion)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]], dtype=torch.float32)
    logits = model(torch.randn(6, 384), torch.rand(6, 3, 32, 32), mask)
    assert logits.shape == (6, 2)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    state = engine.trainable_state(model)
    # Only the trainable fusion model travels: no MiniLM weight, far below its 22.7M parameters.
    assert not any("embeddings" in k or "attention" in k for k in state)
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in model.parameters())
    assert sum(v.numel() for v in state.values()) < 1_000_000
    assert all(v.dtype == torch.float32 for v in state.values())


def test_state_dict_round_trip():
    cfg = load_config("")
    a, b = build_model(cfg), build_model(cfg)
    b.load_state_dict(engine.trainable_state(a))
    text, image = torch.randn(3, 384), torch.rand(3, 3, 32, 32)
    a.eval(), b.eval()
    mask = torch.ones(3, 2)
    assert torch.equal(a(text, image, mask), b(text, image, mask))


def test_missing_modality_uses_placeholder_and_branches_are_declared():
    model = build_model(load_config(""))
    text, image = torch.randn(2, 384), torch.rand(2, 3, 32, 32)
    no_image = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    other_image = torch.rand(2, 3, 32, 32)
    model.eval()
    # With the image marked missing, the image content cannot change the output.
    assert torch.equal(model(text, image, no_image), model(text, other_image, no_image))
    assert not torch.equal(model(text, image, torch.ones(2, 2)), model(text, other_image, torch.ones(2, 2)))
    branches = model.branches()
    assert branches["missing_image"] == "image" and branches["text_proj.0.weight"] == "text"
    assert {b for k, b in branches.items() if k.startswith("head")} == {"joint"}
    assert set(branches) == set(engine.trainable_state(model))


def test_token_output_pools_to_the_same_vector():
    pooled, tokens = FrozenTextEncoder(), FrozenTextEncoder(output="tokens")
    captions = ["a short one", "a somewhat longer caption about the weather today"]
    states = tokens.encode(captions)
    assert states.dtype == torch.float16 and states.shape[:2] == (2, 11)
    states_f, padding = tokens.tokens(states)
    assert padding[0].sum() > 0 and not padding[1].any()  # the short caption is zero-padded
    torch.testing.assert_close(tokens.pooled(states), pooled.encode(captions), atol=5e-3, rtol=1e-2)
    assert len({pooled.identity(), tokens.identity(), FrozenTextEncoder(pooling="cls").identity()}) == 3


def test_finetune_encoder_trains_and_exports_only_its_last_layers():
    cfg = load_config("model/text_encoder=finetune model.text_encoder.trainable_layers=2 model.text_hidden_dim=32")
    model = build_model(cfg)
    ids = model.text_encoder.encode(["my neighbours never change", "pizza", ""])
    assert ids.dtype == torch.long and ids.shape[0] == 3
    logits = model(ids, torch.rand(3, 3, 32, 32), torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    logits.sum().backward()
    state = engine.trainable_state(model)
    layers = {k.split(".")[4] for k in state if k.startswith("text_encoder.bert.encoder.layer.")}
    assert layers == {"4", "5"}  # MiniLM has 6 layers: the last two travel
    assert not any("embeddings" in k or "pooler" in k for k in state)
    assert model.text_encoder.bert.encoder.layer[5].output.dense.weight.grad is not None
    assert model.text_encoder.bert.encoder.layer[0].output.dense.weight.grad is None
    assert {model.branch_of(k) for k in state if k.startswith("text_encoder")} == {"text"}
    other = build_model(cfg)
    other.load_state_dict(state)
    model.eval(), other.eval()
    torch.testing.assert_close(model.text_encoder.pooled(ids), other.text_encoder.pooled(ids))


def test_resnet18_loads_a_local_state_dict(tmp_path):
    from fedmemes.models.components.image_backbone import ResNet18
    from fedmemes.models.components.resnet import resnet18_trunk

    torch.manual_seed(3)
    trunk = resnet18_trunk()
    with torch.no_grad():
        trunk.bn1.running_mean.uniform_(0, 0.1)
    saved = dict(trunk.state_dict(), **{"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)})
    torch.save(saved, tmp_path / "resnet18.pth")  # torchvision's layout, classifier included
    cfg = load_config(f"model/image_encoder=resnet18 model.image_encoder.weights={tmp_path / 'resnet18.pth'}")
    model = build_model(cfg)
    assert isinstance(model.image_encoder, ResNet18)
    assert torch.equal(model.image_encoder.trunk.conv1.weight, trunk.conv1.weight)
    model.train()
    model(torch.randn(2, 384), torch.rand(2, 3, 64, 64), torch.ones(2, 2)).sum().backward()
    # Frozen trunk: its BatchNorm statistics do not drift in training and nothing of it travels.
    assert torch.equal(model.image_encoder.trunk.bn1.running_mean, trunk.bn1.running_mean)
    state = engine.trainable_state(model)
    assert not any(k.startswith("image_encoder.trunk") for k in state) and "image_encoder.proj.weight" in state
    tuned = build_model(load_config("model/image_encoder=resnet18 model.image_encoder.freeze=false"))
    assert any(k.startswith("image_encoder.trunk.layer4") for k in engine.trainable_state(tuned))
    try:
        build_model(load_config(f"model/image_encoder=resnet18 model.image_encoder.weights={tmp_path / 'nope.pth'}"))
        raise AssertionError("a missing weight file must fail")
    except Exception as err:  # hydra wraps the FileNotFoundError
        assert "no file at" in str(err)
