"""A small CNN trained from scratch (no pretrained image weights are available offline)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Four conv blocks -> global average pool -> `out_dim` features.

    GroupNorm, not BatchNorm: no running statistics to average across clients whose
    label mixes differ (Hsieh et al. 2020, "The Non-IID Data Quagmire").
    """

    def __init__(self, out_dim: int = 128, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans, chans[1:]):
            blocks += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.GroupNorm(8, c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.proj = nn.Linear(chans[-1], out_dim)
        self.out_dim = out_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map float images (B, 3, H, W) in [0, 1] to features (B, out_dim)."""
        x = self.features(images)
        return self.proj(x.mean(dim=(2, 3)))
