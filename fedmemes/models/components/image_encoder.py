"""A small CNN trained from scratch (no pretrained image weights are available offline).

Every image encoder offers the same things: `out_dim` and `forward(images) -> (B, out_dim)` for
pooled features, `regions(images) -> (B, h*w, out_dim)` for the spatial positions of its feature
map (what cross-attention attends over; their mean is `forward`), and `feature_map`.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four conv blocks -> global average pool -> `out_dim` features; the map is H/16 x W/16.

    The first conv has stride 2 (an early downsampling stem, as in ResNet) and the last block does
    not pool: the same map size as four pooled blocks for a quarter of the compute, which keeps a
    client round cheap next to the cached caption features.
    GroupNorm, not BatchNorm: no running statistics to average across clients whose
    label mixes differ (Hsieh et al. 2020, "The Non-IID Data Quagmire").
    """

    def __init__(self, out_dim: int = 128, width: int = 16) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        blocks: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(chans)):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.GroupNorm(8, c_out),
                nn.ReLU(inplace=True),
            ]
            if i < len(chans) - 2:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.proj = nn.Linear(chans[-1], out_dim)
        self.out_dim = out_dim
        self.map_dim = chans[-1]

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] to region features (B, map_dim, H/16, W/16)."""
        return self.features(images)

    def regions(self, images: torch.Tensor) -> torch.Tensor:
        """Map images to per-region features (B, h*w, out_dim); their mean is `forward`."""
        return self.proj(self.feature_map(images).flatten(2).transpose(1, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map float images (B, 3, H, W) in [0, 1] to features (B, out_dim)."""
        return self.proj(self.feature_map(images).mean(dim=(2, 3)))
