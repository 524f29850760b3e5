"""Turn memes into tensors once per node: frozen text vectors and resized images, cached on disk.

Cache files are keyed by the encoder's identity and the inputs' content (caption
strings, image bytes), so a changed encoder, caption or image never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedmemes.data.images import load_image_array
from fedmemes.data.meme import Meme


class TextEncoder(Protocol):
    """What the feature cache needs from a frozen text encoder."""

    def identity(self) -> str: ...
    def encode(self, texts: list[str]) -> torch.Tensor: ...


@dataclass
class MemeTensors:
    """Model-ready tensors for a list of memes, row i = meme i."""

    text: torch.Tensor  # (N, D) float32 pooled text vectors
    image: torch.Tensor  # (N, 3, S, S) uint8
    label: torch.Tensor  # (N,) int64
    mask: torch.Tensor  # (N, 2) float32: [has text, has image]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def dataset(self) -> torch.utils.data.TensorDataset:
        """Return a TensorDataset of (text, image, mask, label)."""
        return torch.utils.data.TensorDataset(self.text, self.image, self.mask, self.label)


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:24]


def _cached(path: Path, build) -> torch.Tensor:
    if path.exists():
        return load_file(path)["x"]
    x = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({"x": x.contiguous()}, tmp)
    os.replace(tmp, path)  # atomic: concurrent clients never read a half-written file
    return x


def encode_texts(texts: list[str], encoder: TextEncoder, cache_dir: Path) -> torch.Tensor:
    """Encode captions with the frozen encoder, each distinct caption once, cached on disk."""
    key = _digest([encoder.identity().encode()] + [t.encode() for t in texts])

    def build() -> torch.Tensor:
        unique = sorted(set(texts))
        vectors = encoder.encode(unique)
        row = {t: i for i, t in enumerate(unique)}
        return vectors[[row[t] for t in texts]]

    return _cached(cache_dir / f"text-{key}.safetensors", build)


def load_images(paths: list[Path], size: int, cache_dir: Path) -> torch.Tensor:
    """Load and resize images to uint8 (N, 3, size, size), cached by their bytes."""
    key = _digest([str(size).encode()] + [p.read_bytes() for p in paths])

    def build() -> torch.Tensor:
        if not paths:
            return torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return torch.from_numpy(np.stack([load_image_array(p, size) for p in paths]))

    return _cached(cache_dir / f"image-{key}.safetensors", build)


def build_tensors(memes: list[Meme], encoder: TextEncoder, image_size: int, cache_dir: str | Path) -> MemeTensors:
    """Return model-ready tensors for `memes`, reusing the on-disk cache."""
    cache = Path(cache_dir) / "features"
    return MemeTensors(
        text=encode_texts([m.text for m in memes], encoder, cache),
        image=load_images([m.img for m in memes], image_size, cache),
        label=torch.tensor([m.label for m in memes], dtype=torch.long),
        mask=torch.tensor([[m.has_text, m.has_image] for m in memes], dtype=torch.float32).reshape(-1, 2),
    )
