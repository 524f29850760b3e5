"""Early fusion: concatenate text and image features, then an MLP head (the seed's model)."""

from __future__ import annotations

import torch
from torch import nn

from fedmemes.models.base import MemeClassifier, TextEncoder, fill_missing, out_dim, pooled_text
from fedmemes.models.components.image_encoder import SmallCNN


class EarlyFusion(MemeClassifier):
    """Text vector ++ image features -> `fusion_output_dim` -> `output_size` logits.

    `text_hidden_dim` is the width of a trainable projection of the text encoder's
    pooled vector, whatever the encoder's own width (384 for the bundled MiniLM,
    768 for BERT-base). A frozen encoder is not part of this module: its outputs are
    computed once per node and cached (see `fedmemes.data.features`); a trainable one
    is a submodule. `image_encoder` defaults to the from-scratch SmallCNN of width
    `image_width` and `image_output_dim` features. A missing modality is replaced by a
    learned placeholder feature vector.
    """

    text_branch = ("text_encoder", "text_proj", "missing_text")
    image_branch = ("image_encoder", "missing_image")

    def __init__(
        self,
        text_encoder: TextEncoder,
        text_hidden_dim: int = 256,
        image_output_dim: int = 128,
        fusion_output_dim: int = 256,
        output_size: int = 2,
        image_width: int = 16,
        dropout: float = 0.1,
        image_encoder: nn.Module | None = None,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        self.text_encoder = text_encoder  # a frozen encoder is a plain object: not a submodule, never exported
        # LayerNorm first: pooled sentence vectors have small, uneven scales; normalised, the head learns in far fewer
        # steps.
        self.text_proj = nn.Sequential(
            nn.LayerNorm(text_encoder.dim), nn.Linear(text_encoder.dim, text_hidden_dim), nn.ReLU()
        )
        # Built after text_proj, as in the seed's model, so seeded initialisations stay the same.
        self.image_encoder = (
            image_encoder if image_encoder is not None else SmallCNN(image_output_dim, width=image_width)
        )
        image_dim = out_dim(self.image_encoder)
        self.missing_text = nn.Parameter(torch.zeros(text_hidden_dim))
        self.missing_image = nn.Parameter(torch.zeros(image_dim))
        self.head = nn.Sequential(
            nn.Linear(text_hidden_dim + image_dim, fusion_output_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fusion_output_dim, output_size),
        )

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map text inputs, images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits."""
        mask = self.available(mask)
        text_feat = fill_missing(self.text_proj(pooled_text(self.text_encoder, text)), mask[:, 0], self.missing_text)
        image_feat = fill_missing(self.image_encoder(image), mask[:, 1], self.missing_image)
        return self.head(torch.cat([text_feat, image_feat], dim=1))


# The seed's name: its README, notebooks and run directories saved before the rename use it.
HatefulMemesFusionModel = EarlyFusion
