"""Intermediate fusion: attention within each meme between caption tokens and image regions."""

from __future__ import annotations

import torch
from torch import nn

from fedmemes.models.base import MemeClassifier, TokenTextEncoder, check_choice, mlp, out_dim

DIRECTIONS = {
    "both": ("text_to_image", "image_to_text"),
    "text_to_image": ("text_to_image",),  # caption tokens query the image regions
    "image_to_text": ("image_to_text",),  # image regions query the caption tokens
}


def masked_mean(x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, H) over positions where padding (B, L) is False."""
    keep = (~padding).unsqueeze(-1).to(x.dtype)
    return (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)


class CrossAttentionFusion(MemeClassifier):
    """Caption token states and CNN feature-map positions attend to each other, meme by meme.

    Tokens (B, L, D) and the image encoder's regions (B, h*w, out_dim) are projected to
    `hidden_dim`; each enabled direction is one multi-head attention layer with a residual and LayerNorm
    whose queries come from one modality and keys/values from the other *of the same meme* (batch-first
    tensors: the batch dimension is never attended over). Both sides are mean-pooled, concatenated, and fed to an
    MLP head. A missing modality becomes a learned placeholder sequence.
    """

    text_branch = ("text_encoder", "text_proj", "missing_text")
    image_branch = ("image_encoder", "image_proj", "missing_image")

    def __init__(
        self,
        text_encoder: TokenTextEncoder,
        image_encoder: nn.Module,
        hidden_dim: int = 128,
        num_heads: int = 4,
        direction: str = "both",
        fusion_output_dim: int = 128,
        output_size: int = 2,
        dropout: float = 0.1,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__(modality_dropout)
        check_choice("model.direction", direction, tuple(DIRECTIONS))
        if not getattr(text_encoder, "gives_tokens", False):
            raise ValueError(
                "cross_attention needs caption token states: use model/text_encoder=frozen_tokens "
                "(or finetune), or set model.text_encoder.output=tokens"
            )
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.add_projections(text_encoder.dim, out_dim(image_encoder), hidden_dim, torch.zeros)
        self.attend = nn.ModuleDict(
            {
                d: nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
                for d in DIRECTIONS[direction]
            }
        )
        self.norm = nn.ModuleDict({d: nn.LayerNorm(hidden_dim) for d in DIRECTIONS[direction]})
        self.head = mlp(2 * hidden_dim, fusion_output_dim, output_size, dropout)

    def _cross(self, name: str, query: torch.Tensor, keys: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        if name not in self.attend:
            return query
        out, _ = self.attend[name](query, keys, keys, key_padding_mask=key_padding, need_weights=False)
        return self.norm[name](query + out)

    def forward(self, text: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Map caption token inputs, images (B, 3, H, W) in [0, 1] and mask (B, 2) to logits."""
        mask = self.available(mask)
        states, text_pad = self.text_encoder.tokens(text)
        tokens = self.text_proj(states)  # (B, L, H)
        regions = self.image_proj(self.image_encoder.regions(image))  # type: ignore[operator]  # (B, R, H): one per map position; __getattr__ is typed Tensor | Module
        has_text = mask[:, 0].view(-1, 1, 1) > 0
        has_image = mask[:, 1].view(-1, 1, 1) > 0
        tokens = torch.where(has_text, tokens, self.missing_text.expand_as(tokens))
        regions = torch.where(has_image, regions, self.missing_image.expand_as(regions))
        # A missing caption may be all padding: unmask it so its placeholder keys keep attention finite.
        text_pad = text_pad & has_text.squeeze(-1)
        region_pad = torch.zeros(regions.shape[:2], dtype=torch.bool, device=regions.device)
        text_out = self._cross("text_to_image", tokens, regions, region_pad)
        image_out = self._cross("image_to_text", regions, tokens, text_pad)
        return self.head(torch.cat([masked_mean(text_out, text_pad), image_out.mean(1)], dim=1))
