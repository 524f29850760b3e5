"""Feature interaction (Hate-CLIPper): the outer or elementwise product of text and image vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedmemes.models.base import MemeClassifier, TextEncoder, check_choice, fill_missing, mlp, out_dim, pooled_text

INTERACTIONS = ("outer", "elementwise")


class FeatureInteraction(MemeClassifier):
    """Project both modalities to `proj_dim`, L2-normalise, combine by product, then an MLP head.

    `interaction="outer"` feeds every pairwise product t_i * v_j (proj_dim^2 features: the
    "feature interaction matrix" of Kumar & Nandakumar 2022); "elementwise" feeds t * v
    (proj_dim features, an aligned-space match). Products let a linear head express
    "this caption AND this image", which concatenation needs a hidden layer for.
    """

    text_branch = ("text_encoder", "text_proj", "missing_text")
    image_branch = ("image_encoder", "image_proj", "missing_image")

    def __init__(
        self,
        text_encoder: TextEncoder,
        image_encoder: nn.Module,
        proj_dim: int = 32,
        interaction: str = "outer",
        fusion_output_dim: int = 128,
        output_size: int = 2,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        check_choice("model.interaction", interaction, INTERACTIONS)
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.interaction = interaction
        self.add_projections(text_encoder.dim, out_dim(image_encoder), proj_dim, lambda d: torch.randn(d) * 0.1)
        features = proj_dim * proj_dim if interaction == "outer" else proj_dim
        self.head = mlp(features, fusion_output_dim, output_size, dropout)
        self.proj_dim = proj_dim

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map text inputs, images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits."""
        mask = self.available(mask)
        t = fill_missing(self.text_proj(pooled_text(self.text_encoder, text)), mask[:, 0], self.missing_text)
        v = fill_missing(self.image_proj(self.image_encoder(image)), mask[:, 1], self.missing_image)
        # Unit vectors scaled by sqrt(proj_dim): entries of order 1, whatever proj_dim is.
        scale = self.proj_dim**0.5
        t, v = F.normalize(t, dim=1) * scale, F.normalize(v, dim=1) * scale
        joint = torch.einsum("bi,bj->bij", t, v).flatten(1) if self.interaction == "outer" else t * v
        return self.head(joint)
