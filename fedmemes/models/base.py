"""What every meme model promises: forward(text, image, mask) -> logits, and its branches."""

from __future__ import annotations

import torch
from torch import nn


class MemeClassifier(nn.Module):
    """Base class of all meme models.

    `forward(text, image, mask)`: pooled text (B, D), images (B, 3, H, W) in [0, 1], and an
    availability mask (B, 2) of [has text, has image] in {0, 1}; returns logits (B, output_size).

    Subclasses name the parameter prefixes of their text and image branches, so per-branch
    aggregation (modality-aware strategies) can ask the model instead of guessing from names.
    """

    text_branch: tuple[str, ...] = ()
    image_branch: tuple[str, ...] = ()

    def branch_of(self, name: str) -> str:
        """Return 'text', 'image' or 'joint' (fusion and head) for a state-dict key."""
        if name.startswith(self.text_branch) and self.text_branch:
            return "text"
        if name.startswith(self.image_branch) and self.image_branch:
            return "image"
        return "joint"

    def branches(self) -> dict[str, str]:
        """Map every state-dict key to its branch."""
        return {name: self.branch_of(name) for name in self.state_dict()}


def fill_missing(features: torch.Tensor, present: torch.Tensor, placeholder: torch.Tensor) -> torch.Tensor:
    """Replace rows whose modality is missing (present == 0) by a learned placeholder vector."""
    return torch.where(present.unsqueeze(1) > 0, features, placeholder.expand_as(features))
