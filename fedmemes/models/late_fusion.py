"""Late fusion: a text-only head and an image-only head, their logits combined by learned weights."""

from __future__ import annotations

import torch
from torch import nn

from fedmemes.models.base import MemeClassifier, TextEncoder, fill_missing, mlp, out_dim, pooled_text


class LateFusion(MemeClassifier):
    """logits = w_text * text_head(text) + w_image * image_head(image) [-> decision layer].

    Each head sees one modality only, so the combination is a sum of per-modality scores: it
    cannot represent interactions such as "this caption is hateful with this image only" (XOR).
    `decision_layer=true` adds a small linear layer over both heads' logits (still additive).
    A missing modality's features are replaced by a learned placeholder before its head.
    """

    text_branch = ("text_encoder", "text_head", "missing_text")
    head_branch = ("weights", "decision")  # the vote that joins the two branch heads (each is a whole branch)
    image_branch = ("image_encoder", "image_head", "missing_image")

    def __init__(
        self,
        text_encoder: TextEncoder,
        image_encoder: nn.Module,
        text_hidden_dim: int = 256,
        head_hidden_dim: int = 128,
        output_size: int = 2,
        decision_layer: bool = False,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.text_head = nn.Sequential(
            nn.Linear(text_encoder.dim, text_hidden_dim),
            nn.ReLU(),
            mlp(text_hidden_dim, head_hidden_dim, output_size, dropout),
        )
        self.image_head = mlp(out_dim(image_encoder), head_hidden_dim, output_size, dropout)
        self.missing_text = nn.Parameter(torch.zeros(text_encoder.dim))
        self.missing_image = nn.Parameter(torch.zeros(out_dim(image_encoder)))
        self.weights = nn.Parameter(torch.full((2,), 0.5))  # learned weight of each head's vote
        self.decision = nn.Linear(2 * output_size, output_size) if decision_layer else None

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map text inputs, images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits."""
        mask = self.available(mask)
        text_vec = fill_missing(pooled_text(self.text_encoder, text), mask[:, 0], self.missing_text)
        image_vec = fill_missing(self.image_encoder(image), mask[:, 1], self.missing_image)
        votes = (self.weights[0] * self.text_head(text_vec), self.weights[1] * self.image_head(image_vec))
        if self.decision is not None:
            return self.decision(torch.cat(votes, dim=1))
        return votes[0] + votes[1]
