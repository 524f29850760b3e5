"""Pretrained image backbones loaded from a local weight file: the interface, and ResNet-18."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fedmemes.models.components.resnet import resnet18_trunk

# ImageNet statistics: pretrained backbones expect inputs normalised this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors file or a torch .pt/.pth file (tensors only)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.image_encoder.weights: no file at {path}; give the absolute path of a "
            "state dict (.pth/.pt/.safetensors) or null to train from random weights"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class PretrainedBackbone(nn.Module):
    """A CNN trunk with weights from a local file, a trainable projection to `out_dim`.

    Subclasses implement `build_trunk() -> (trunk, channels)`; the trunk maps normalised images to
    a feature map. `freeze=True` keeps the trunk fixed (its weights and BatchNorm statistics stay
    as loaded on every node and never travel); false fine-tunes it.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, weights: str | None = None, out_dim: int = 128, freeze: bool = True) -> None:
        super().__init__()
        self.trunk, self.map_dim = self.build_trunk()
        if weights:
            state = load_weights(weights)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier is unused
            missing, unexpected = self.trunk.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"{weights}: does not fit {type(self).__name__} "
                    f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
        self.freeze = freeze
        for p in self.trunk.parameters():
            p.requires_grad_(not freeze)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(self.map_dim, out_dim)
        self.out_dim = out_dim

    def build_trunk(self) -> tuple[nn.Module, int]:
        """Return the trunk module and its output channels."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> PretrainedBackbone:
        """Switch modes, but a frozen trunk stays in eval so its BatchNorm statistics never drift."""
        super().train(mode)
        if self.freeze:
            self.trunk.eval()
        return self

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] to region features (B, map_dim, h, w)."""
        return self.trunk((images - self.mean) / self.std)

    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """Map images to per-region features (B, h*w, out_dim); their mean is `forward`."""
        return self.proj(self.feature_map(images).flatten(2).transpose(1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] to features (B, out_dim)."""
        return self.proj(self.feature_map(images).mean(dim=(2, 3)))


class ResNet18(PretrainedBackbone):
    """ResNet-18 (torchvision's layout and key names, so its `resnet18-*.pth` files load as they are)."""

    def build_trunk(self) -> tuple[nn.Module, int]:
        """Return the ResNet-18 trunk without its pooling and classifier."""
        return resnet18_trunk(), 512
