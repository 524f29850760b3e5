"""A BERT-family text encoder whose last N layers (or all) train and travel with the model."""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from fedmemes.models.base import check_choice
from fedmemes.models.components.text_encoder import (
    POOLINGS,
    bundled_minilm_path,
    load_frozen,
    pool,
    tokenize,
    weights_stamp,
)


class TrainableTextEncoder(nn.Module):
    """Fine-tune a local BERT-family checkpoint inside the model.

    The data side only tokenises (`encode` returns token ids (N, L) int64, padded with the
    tokenizer's pad id); the transformer runs in the model's forward. `trainable_layers=N` trains
    the last N transformer layers (frozen embeddings and lower layers never travel); null trains
    every layer. Being a submodule, the trainable part is in the model's state dict.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        trainable_layers: int | None = 2,
        max_length: int = 64,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        check_choice("model.text_encoder.pooling", pooling, POOLINGS)
        self.name_or_path = name_or_path or bundled_minilm_path()
        shared, tokenizer = load_frozen(self.name_or_path)
        self.bert = copy.deepcopy(shared)  # the cached copy stays frozen for other users
        self.tokenizer = tokenizer  # plain attribute: not a module, no weights
        self.max_length, self.pooling = max_length, pooling
        self.pad_id = int(tokenizer.pad_token_id or 0)
        layers = self._layers()
        n = len(layers) if trainable_layers is None else int(trainable_layers)
        if not 0 < n <= len(layers):
            raise ValueError(
                f"model.text_encoder.trainable_layers={trainable_layers}: must be 1..{len(layers)} "
                "or null (all); for a frozen encoder use model/text_encoder=frozen"
            )
        train_all = trainable_layers is None
        for name, p in self.bert.named_parameters():
            # The pooler is unused (we pool ourselves): keeping it frozen keeps it off the wire.
            p.requires_grad_(train_all and not name.startswith("pooler"))
        for layer in layers[len(layers) - n :]:
            for p in layer.parameters():
                p.requires_grad_(True)
        self.trainable_layers = n

    def _layers(self) -> nn.ModuleList:
        encoder = getattr(self.bert, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"{self.name_or_path}: not a BERT-family model (no encoder.layer list)")
        return layers

    @property
    def dim(self) -> int:
        """Width of the token states and pooled vector."""
        return int(self.bert.config.hidden_size)

    @property
    def gives_tokens(self) -> bool:
        """Token states are always available: the transformer runs in forward."""
        return True

    def identity(self) -> str:
        """Return a key for the cached token ids: tokenizer and truncation, not the (changing) weights."""
        raw = f"ids|{self.name_or_path}|{self.max_length}|{weights_stamp(self.name_or_path)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return token ids (N, L) int64, padded to the longest caption."""
        if not texts:
            return torch.full((0, 1), self.pad_id, dtype=torch.long)
        batch = tokenize(self.tokenizer, texts, self.max_length)
        return batch["input_ids"].long()

    def tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer: token states (B, L, D) and the padding mask (B, L), True at padding."""
        ids = ids.long()
        attention = (ids != self.pad_id).long()
        attention[:, 0] = 1  # a missing caption is all padding: keep one key so attention stays finite
        states = self.bert(input_ids=ids, attention_mask=attention).last_hidden_state
        return states, attention == 0

    def pooled(self, ids: torch.Tensor) -> torch.Tensor:
        """Return pooled vectors (B, D)."""
        states, padding = self.tokens(ids)
        return pool(states, (~padding).float(), self.pooling)
