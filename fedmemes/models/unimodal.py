"""Unimodal baselines: the same encoders and training, one modality only."""

from __future__ import annotations

import torch
from torch import nn

from fedmemes.models.base import MemeClassifier, TextEncoder, fill_missing, mlp, out_dim, pooled_text


class TextOnly(MemeClassifier):
    """Caption -> projection -> MLP head; the image is never looked at."""

    text_branch = ("text_encoder", "text_proj", "missing_text")

    def __init__(
        self,
        text_encoder: TextEncoder,
        text_hidden_dim: int = 256,
        fusion_output_dim: int = 128,
        output_size: int = 2,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        self.text_encoder = text_encoder
        self.text_proj = nn.Sequential(nn.Linear(text_encoder.dim, text_hidden_dim), nn.ReLU())
        self.missing_text = nn.Parameter(torch.zeros(text_hidden_dim))
        self.head = mlp(text_hidden_dim, fusion_output_dim, output_size, dropout)

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map text inputs and mask (B, 2) to logits; `image` is ignored."""
        mask = self.available(mask)
        return self.head(
            fill_missing(self.text_proj(pooled_text(self.text_encoder, text)), mask[:, 0], self.missing_text)
        )


class ImageOnly(MemeClassifier):
    """Image -> image encoder -> MLP head; the caption is never looked at.

    Takes the text encoder only because the data side builds text inputs from it for every model.
    """

    image_branch = ("image_encoder", "missing_image")

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: TextEncoder | None = None,
        fusion_output_dim: int = 128,
        output_size: int = 2,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        self.image_encoder = image_encoder
        self.missing_image = nn.Parameter(torch.zeros(out_dim(image_encoder)))
        self.head = mlp(out_dim(image_encoder), fusion_output_dim, output_size, dropout)

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits; `text` is ignored."""
        mask = self.available(mask)
        return self.head(fill_missing(self.image_encoder(image), mask[:, 1], self.missing_image))
