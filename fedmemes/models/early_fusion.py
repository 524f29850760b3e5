"""Early fusion: concatenate text and image features, then an MLP head (the seed's model)."""

from __future__ import annotations

import torch
from torch import nn

from fedmemes.models.base import MemeClassifier, fill_missing
from fedmemes.models.image_encoder import SmallCNN
from fedmemes.models.text_encoder import FrozenTextEncoder


class HatefulMemesFusionModel(MemeClassifier):
    """Text vector ++ CNN image features -> `fusion_output_dim` -> `output_size` logits.

    `text_hidden_dim` is the width of a trainable projection of the text encoder's
    pooled vector, whatever the encoder's own width (384 for the bundled MiniLM,
    768 for BERT-base). The frozen encoder itself is not part of this module: its
    outputs are computed once per node and cached (see `fedmemes.data.features`).
    A missing modality is replaced by a learned placeholder feature vector.
    """

    text_branch = ("text_proj", "missing_text")
    image_branch = ("image_encoder", "missing_image")

    def __init__(
        self,
        text_encoder: FrozenTextEncoder,
        text_hidden_dim: int = 256,
        image_output_dim: int = 128,
        fusion_output_dim: int = 256,
        output_size: int = 2,
        image_width: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder  # plain attribute: not a submodule, never exported
        self.text_proj = nn.Sequential(nn.Linear(text_encoder.dim, text_hidden_dim), nn.ReLU())
        self.image_encoder = SmallCNN(image_output_dim, width=image_width)
        self.missing_text = nn.Parameter(torch.zeros(text_hidden_dim))
        self.missing_image = nn.Parameter(torch.zeros(image_output_dim))
        self.head = nn.Sequential(
            nn.Linear(text_hidden_dim + image_output_dim, fusion_output_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fusion_output_dim, output_size),
        )

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map pooled text (B, D), images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits."""
        text_feat = fill_missing(self.text_proj(text), mask[:, 0], self.missing_text)
        image_feat = fill_missing(self.image_encoder(image), mask[:, 1], self.missing_image)
        return self.head(torch.cat([text_feat, image_feat], dim=1))
