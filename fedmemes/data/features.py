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

    # What the text encoder's encode() gives: (N, D) float32 pooled vectors (the default),
    # (N, L, D) float16 zero-padded token states (output=tokens) or (N, L) int64 token ids
    # (a trainable encoder). The model's text encoder knows how to read its own inputs.
    text: torch.Tensor
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


def encode_texts(texts: list[str | None], encoder: TextEncoder, cache_dir: Path) -> torch.Tensor:
    """Encode captions with the frozen encoder, each distinct caption once, cached on disk.

    A None caption (text marked missing) gets a zero row; the mask tells the model to ignore it.
    """
    key = _digest([encoder.identity().encode()] + [b"\0missing" if t is None else t.encode() for t in texts])

    def build() -> torch.Tensor:
        unique = sorted({t for t in texts if t is not None})
        vectors = encoder.encode(unique) if unique else None
        row = {t: i for i, t in enumerate(unique)}
        if vectors is None:
            probe = encoder.encode(["x"])
            return torch.zeros((len(texts), *probe.shape[1:]), dtype=probe.dtype)
        # Any row shape: pooled (D,), token states (L, D) or token ids (L,); zero = padding.
        out = torch.zeros((len(texts), *vectors.shape[1:]), dtype=vectors.dtype)
        present = [i for i, t in enumerate(texts) if t is not None]
        out[present] = vectors[[row[texts[i]] for i in present]]
        return out

    return _cached(cache_dir / f"text-{key}.safetensors", build)


def load_images(paths: list[Path | None], size: int, cache_dir: Path) -> torch.Tensor:
    """Load and resize images to uint8 (N, 3, size, size), cached by their bytes.

    A None path (image marked missing) is never read: its row stays zero and the mask,
    not the pixels, tells the model the image is absent.
    """
    key = _digest([str(size).encode()] + [b"\0missing" if p is None else p.read_bytes() for p in paths])

    def build() -> torch.Tensor:
        out = torch.zeros(len(paths), 3, size, size, dtype=torch.uint8)
        for i, p in enumerate(paths):
            if p is not None:
                out[i] = torch.from_numpy(load_image_array(p, size))
        return out

    return _cached(cache_dir / f"image-{key}.safetensors", build)


def build_tensors(memes: list[Meme], encoder: TextEncoder, image_size: int, cache_dir: str | Path) -> MemeTensors:
    """Return model-ready tensors for `memes`, reusing the on-disk cache."""
    cache = Path(cache_dir) / "features"
    return MemeTensors(
        text=encode_texts([m.text if m.has_text else None for m in memes], encoder, cache),
        image=load_images([m.img if m.has_image else None for m in memes], image_size, cache),
        label=torch.tensor([m.label for m in memes], dtype=torch.long),
        mask=torch.tensor([[m.has_text, m.has_image] for m in memes], dtype=torch.float32).reshape(-1, 2),
    )
