"""EfficientNet-Lite0: bundled ImageNet weights, frozen part cached per node, only trainable tensors travel."""

import numpy as np
import torch
from PIL import Image

from fedmemes.config import build_model, load_config
from fedmemes.data.features import build_tensors
from fedmemes.data.meme import Meme
from fedmemes.models.components.efficientnet import EfficientNetLite0, bundled_weights
from fedmemes.models.components.image_backbone import load_weights


def test_bundled_imagenet_weights_are_loaded_and_frozen_features_cached():
    enc = EfficientNetLite0(out_dim=8)
    assert torch.equal(enc.trunk._conv_stem.weight, load_weights(bundled_weights())["_conv_stem.weight"])
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    feats = enc.encode_images(images)
    assert feats.shape == (2, 1280) and not torch.allclose(feats[0], feats[1])
    assert torch.allclose(enc(feats), enc(images.float() / 255), atol=1e-4)  # cached == raw path


def test_frozen_trunk_never_travels():
    model = build_model(load_config("model/image_encoder=efficientnet_lite0"))
    keys = set(model.state_dict())
    assert not any("trunk" in k for k in keys) and "image_encoder.proj.weight" in keys


def test_trainable_blocks_travel_and_cache_the_first_trainable_input():
    model = build_model(load_config("model/image_encoder=efficientnet_lite0 model.image_encoder.trainable_blocks=2"))
    keys = set(model.state_dict())
    assert any(k.startswith("image_encoder.trunk._blocks.15.") for k in keys)
    assert any(k.startswith("image_encoder.trunk._blocks.14.") for k in keys)
    assert not any(k.startswith("image_encoder.trunk._blocks.13.") for k in keys)
    enc = model.image_encoder
    cached = enc.encode_images(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert cached.shape == (2, 192, 2, 2) and cached.dtype == torch.float16  # input of block 14
    enc(cached).sum().backward()
    assert enc.trunk._blocks[15]._project_conv.weight.grad is not None
    assert enc.trunk._blocks[13]._project_conv.weight.grad is None
    assert enc.identity() != EfficientNetLite0().identity()


class CountingImageEncoder(torch.nn.Module):
    batch_size = 2

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def identity(self) -> str:
        return "count"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return images.float().mean(dim=(2, 3))


class Text:
    def identity(self) -> str:
        return "t"

    def encode(self, texts):
        return torch.ones(len(texts), 2)


def test_image_features_encoded_once_per_image_across_lists(tmp_path):
    memes = []
    for i in range(4):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((12, 12, 3), 50 * i, dtype=np.uint8)).save(path)
        memes.append(Meme(id=str(i), img=path, text=f"t{i}", label=i % 2, has_image=i != 3))
    enc = CountingImageEncoder()
    a = build_tensors(memes[:2], Text(), 8, tmp_path / "c", enc)  # one client's share
    b = build_tensors(memes[1:], Text(), 8, tmp_path / "c", enc)  # another list sharing meme 1
    assert enc.seen == 3  # memes 0, 1, 2; meme 1 reused; meme 3 has no image
    assert a.image.shape == (2, 3) and torch.equal(a.image[1], b.image[0])
    assert b.image[2].abs().sum() == 0 and abs(float(a.image[1, 0]) - 50) < 1
    build_tensors(memes[:2], Text(), 16, tmp_path / "c", enc)
    assert enc.seen == 5  # another image size is another entry
