"""CLIP's text and vision towers with their projections (transformers `CLIPModel`), frozen, local files only.

Both towers run once per node on the data side and their outputs are cached like MiniLM's
(`fedmemes.data.features`): the frozen weights never travel. `name_or_path` is a local
checkpoint folder (e.g. a saved `openai/clip-vit-large-patch14`) or a hub id already in the
local HF cache; nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedmemes.models.components.text_encoder import tokenize, weights_stamp

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds
    from transformers import CLIPModel, PreTrainedTokenizerBase

# OpenAI CLIP's normalisation, used when the folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _require(name_or_path: str | None, which: str) -> str:
    if not name_or_path:
        raise ValueError(
            f"model.{which}.name_or_path is required for CLIP: a local checkpoint folder "
            "(or a hub id already in the HF cache), e.g. /models/clip-vit-large-patch14"
        )
    return str(name_or_path)


@functools.lru_cache(maxsize=2)
def _load(name_or_path: str) -> CLIPModel:
    # Cached: a client process builds many models per run, the weights are read once.
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=True).eval()
    except OSError as err:
        raise FileNotFoundError(
            f"CLIP checkpoint {name_or_path!r} not found locally ({err}); give a local folder "
            "saved with CLIPModel.save_pretrained (nothing is downloaded)"
        ) from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@functools.lru_cache(maxsize=2)
def _tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)


def _features(out: object) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


class ClipTextEncoder:
    """CLIP's text tower + text projection: one vector per caption, computed once per node and cached."""

    gives_tokens = False

    def __init__(self, name_or_path: str | None = None, max_length: int = 77, batch_size: int = 64) -> None:
        self.name_or_path = _require(name_or_path, "text_encoder")
        self.max_length = max_length
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        """Width of the projected embedding (768 for ViT-L/14)."""
        return int(_load(self.name_or_path).config.projection_dim)  # type: ignore[arg-type]  # always set (default 512)

    def identity(self) -> str:
        """Return a key that changes whenever the encoder's outputs could change."""
        raw = f"clip-text|{self.name_or_path}|{self.max_length}|{weights_stamp(self.name_or_path)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return projected caption embeddings (N, dim) float32."""
        model, tokenizer = _load(self.name_or_path), _tokenizer(self.name_or_path)
        chunks = [torch.zeros(0, self.dim)]
        for i in range(0, len(texts), self.batch_size):
            batch = tokenize(tokenizer, texts[i : i + self.batch_size], self.max_length)
            chunks.append(
                _features(
                    model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                ).float()
            )
        return torch.cat(chunks)

    def pooled(self, text: torch.Tensor) -> torch.Tensor:
        """Return the cached vectors (B, dim) as float32."""
        return text.float()


class ClipImageEncoder(nn.Module):
    """CLIP's vision tower + visual projection (frozen, cached per node) -> a trainable projection to `out_dim`.

    `forward` takes the cached embeddings (B, D) or raw images (B, 3, H, W) in [0, 1] (resized to
    the tower's input size and normalised here). One vector per image: `regions` gives one region.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, name_or_path: str | None = None, out_dim: int = 128, batch_size: int = 32) -> None:
        super().__init__()
        self.name_or_path = _require(name_or_path, "image_encoder")
        config = _load(self.name_or_path).config
        # CLIPConfig types these Optional / dict | config; after __init__ both are always set and typed.
        self.embed_dim = int(config.projection_dim)  # type: ignore[arg-type]
        self.input_size = int(config.vision_config.image_size)  # type: ignore[union-attr,arg-type]
        mean, std = self._normalisation()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Linear(self.embed_dim, out_dim)
        self.out_dim = out_dim
        self.batch_size = batch_size

    def _normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = Path(self.name_or_path) / "preprocessor_config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            return tuple(data.get("image_mean", CLIP_MEAN)), tuple(data.get("image_std", CLIP_STD))
        return CLIP_MEAN, CLIP_STD

    def identity(self) -> str:
        """Return a key that changes whenever `encode_images` could give other outputs."""
        raw = f"clip-vision|{self.name_or_path}|{weights_stamp(self.name_or_path)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().cpu()  # the frozen tower lives on the CPU, outside this module
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = nn.functional.interpolate(
                x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False
            ).clamp(0, 1)
        x = (x - self.mean.cpu()) / self.std.cpu()
        return _features(_load(self.name_or_path).get_image_features(pixel_values=x)).float()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Return projected image embeddings (B, D) float32 for uint8 images (B, 3, S, S)."""
        return self._embed(images.float() / 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map cached embeddings (B, D) or images (B, 3, H, W) in [0, 1] to features (B, out_dim)."""
        if x.dim() == 4:
            x = self._embed(x).to(self.proj.weight.device)
        return self.proj(x.float())

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """Return (B, 1, out_dim): CLIP's pooled embedding is the only region."""
        return self.forward(x).unsqueeze(1)
