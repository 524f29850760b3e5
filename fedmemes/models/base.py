"""What every meme model promises: forward(text, image, mask) -> logits, its branches, what travels."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import torch
from torch import nn


class TextEncoder(Protocol):
    """What a model reads of its text encoder: the width of its vectors (`pooled` is looked up at run time)."""

    dim: int


class TokenTextEncoder(TextEncoder, Protocol):
    """A text encoder that also hands over caption token states (B, L, D) and their padding mask (B, L)."""

    def tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return token states and the padding mask for the encoder's inputs."""
        ...


# What FedBN (personalization=fedbn) keeps local: _NormBase covers BatchNorm*d and InstanceNorm*d.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise a ValueError naming the config key (e.g. `model.direction`) when `value` is not one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not one of {allowed}")


def out_dim(encoder: nn.Module) -> int:
    """Return an image encoder's feature width (the plain int `out_dim` every image encoder sets)."""
    return cast(int, encoder.out_dim)  # nn.Module.__getattr__ is typed Tensor | Module, whatever was set


class MemeClassifier(nn.Module):
    """Base class of all meme models.

    `forward(text, image, mask)`: the text encoder's inputs (whatever its `encode()` produced on
    the data side: pooled vectors, token states or token ids), images (B, 3, H, W) in [0, 1], and
    an availability mask (B, 2) of [has text, has image] in {0, 1}; returns logits (B, output_size).

    Subclasses name the parameter prefixes of their text and image branches, so per-branch
    aggregation (modality-aware strategies) can ask the model instead of guessing from names.
    The state dict holds only trainable tensors: frozen weights (a frozen backbone, the frozen
    layers of a partly trainable encoder) are loaded from disk on every node and never travel.
    """

    text_branch: tuple[str, ...] = ()
    image_branch: tuple[str, ...] = ()
    head_branch: tuple[str, ...] = ("head",)  # the classifier head: what personalization=local_head keeps local

    def __init__(self, modality_dropout: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"model.modality_dropout must be in [0, 1), got {modality_dropout}")
        self.modality_dropout = modality_dropout

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

    def head_keys(self) -> list[str]:
        """Return the state-dict keys of the classifier head (the `head_branch` prefixes)."""
        return [k for k in self.state_dict() if k.split(".", 1)[0] in self.head_branch]

    def norm_keys(self) -> list[str]:
        """Return the state-dict keys of normalisation layers (BatchNorm, LayerNorm, GroupNorm): weights and buffers."""
        travelling = self.state_dict()
        keys = [
            f"{prefix}.{name}" if prefix else name
            for prefix, module in self.named_modules()
            if isinstance(module, NORM_LAYERS)
            for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        ]
        return [k for k in keys if k in travelling]

    def frozen_keys(self) -> set[str]:
        """Return state-dict keys of frozen tensors: frozen parameters and buffers of all-frozen modules."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        for prefix, module in self.named_modules():
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                frozen |= {f"{prefix}.{b}" if prefix else b for b, _ in module.named_buffers()}
        return frozen

    # torch's overloads tie the return type to `destination=`; this override always returns a plain dict.
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Return the trainable state only (what travels between server and clients)."""
        state: dict[str, torch.Tensor] = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in self.frozen_keys():
            state.pop(prefix + key, None)
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> nn.modules.module._IncompatibleKeys:  # what torch returns (its own method is unannotated)
        """Load a trainable state; frozen tensors stay as loaded from disk."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = self.frozen_keys()  # once: a frozen backbone has hundreds of missing keys
        missing = [k for k in result.missing_keys if k not in frozen]
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"{type(self).__name__}: state does not fit the model (missing {missing[:5]}, unexpected "
                f"{result.unexpected_keys[:5]}); was it saved from another model= or encoder config?"
            )
        return result

    def add_projections(
        self, text_dim: int, image_dim: int, width: int, placeholder: Callable[[int], torch.Tensor]
    ) -> None:
        """Add `text_proj`, `image_proj` to `width`, then learned `missing_text`, `missing_image` from `placeholder`."""
        # This order (projections, then placeholders) is the models' own: seeded initialisations stay the same.
        self.text_proj: nn.Module = nn.Linear(text_dim, width)  # other models project through a Sequential
        self.image_proj = nn.Linear(image_dim, width)
        self.missing_text = nn.Parameter(placeholder(width))
        self.missing_image = nn.Parameter(placeholder(width))

    def available(self, mask: torch.Tensor) -> torch.Tensor:
        """Return the mask, with one modality of complete memes dropped at random while training."""
        if not self.training or self.modality_dropout <= 0:
            return mask
        complete = mask.sum(1) == 2
        drop = (torch.rand(mask.shape[0], device=mask.device) < self.modality_dropout) & complete
        which = torch.randint(0, 2, (mask.shape[0],), device=mask.device)
        dropped = torch.nn.functional.one_hot(which, 2).to(mask.dtype) * drop.unsqueeze(1).to(mask.dtype)
        return mask * (1 - dropped)


def fill_missing(features: torch.Tensor, present: torch.Tensor, placeholder: torch.Tensor) -> torch.Tensor:
    """Replace rows whose modality is missing (present == 0) by a learned placeholder vector."""
    shape = (-1,) + (1,) * (features.dim() - 1)
    return torch.where(present.reshape(shape) > 0, features, placeholder.expand_as(features))


def pooled_text(encoder: object, text: torch.Tensor) -> torch.Tensor:
    """Return pooled text vectors (B, D) from the encoder's inputs."""
    # Encoders without a `pooled` step (plain test doubles) hand over vectors already pooled.
    pool = getattr(encoder, "pooled", None)
    return pool(text) if pool is not None else text.float()


def mlp(d_in: int, hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """Return Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, d_out))
