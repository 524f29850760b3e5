"""Turn memes into tensors once per node: frozen text vectors and resized images, cached on disk.

Cache files are keyed by the encoder's identity and the inputs' content (caption
strings, image bytes), so a changed encoder, caption or image never reuses a stale entry.
An image encoder with a frozen part (`encode_images`, e.g. EfficientNet-Lite0, CLIP) gets its
outputs cached the same way, keyed by its identity, the image size and the image bytes: rounds
after the first then cost what the trainable head costs. Every entry is verified when read and
rebuilt when damaged (`fedmemes.data.cache_entry`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import torch
from tqdm import tqdm

from fedmemes.data.cache_entry import read_entry, read_metadata, write_entry
from fedmemes.data.images import load_image_array
from fedmemes.data.meme import Meme


class ImageEncoder(Protocol):
    """What the feature cache needs from an image encoder with a frozen, cacheable part."""

    batch_size: int

    def identity(self) -> str: ...
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...


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
    image: torch.Tensor  # (N, 3, S, S) uint8 pixels, or the image encoder's cached frozen output (float)
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


def _cached(path: Path, rows: int, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Return the verified entry at `path` (`rows` rows), or build and save it (a bad entry is deleted first)."""
    entry = read_entry(path, rows)
    if entry is not None:
        return entry[0]
    x = build()
    write_entry(path, x)  # atomic: concurrent clients never read a half-written file; a full disk only skips it
    return x


SHARD_ROWS = 512  # rows per store shard


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack rows, zero-padding the first dim to the longest (token states of captions from different batches)."""
    longest = max(r.shape[0] for r in rows) if rows and rows[0].dim() else 0
    if all(r.shape == rows[0].shape for r in rows):
        return torch.stack(rows)
    return torch.stack([torch.nn.functional.pad(r, (0, 0) * (r.dim() - 1) + (0, longest - r.shape[0])) for r in rows])


def _store_rows(store: Path, keys: list[str], compute: Callable[[list[int]], torch.Tensor]) -> list[torch.Tensor]:
    """Return one row per key from the per-item store, computing and saving the missing ones as a new shard.

    `compute(indices into keys)` returns their rows. Shards are written atomically and never
    rewritten, so clients that share the folder never see a half-written one.
    """
    wanted, known = set(keys), {}
    for shard in sorted(store.glob("*.safetensors")) if store.is_dir() else []:
        # Header first: a shard is verified (and, if bad, deleted) only by lookups of keys it holds.
        shard_keys = (read_metadata(shard) or {}).get("keys", "").split(",")
        if wanted.intersection(shard_keys) and (entry := read_entry(shard, len(shard_keys))) is not None:
            known.update({k: row for k, row in zip(shard_keys, entry[0], strict=True) if k in wanted})
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in known:
            first.setdefault(k, i)
    missing = list(first.items())
    # a shard per chunk: an interrupted first encoding keeps its progress
    for start in range(0, len(missing), SHARD_ROWS):
        chunk = dict(missing[start : start + SHARD_ROWS])
        x = compute(list(chunk.values()))
        write_entry(store / f"{_digest([k.encode() for k in chunk])}.safetensors", x, {"keys": ",".join(chunk)})
        known.update(zip(chunk, x, strict=True))
    return [known[k] for k in keys]


def encode_texts(texts: list[str | None], encoder: TextEncoder, cache_dir: Path) -> torch.Tensor:
    """Encode captions with the frozen encoder, each distinct caption once, cached on disk.

    A None caption (text marked missing) gets a zero row; the mask tells the model to ignore it.
    """
    key = _digest([encoder.identity().encode()] + [b"\0missing" if t is None else t.encode() for t in texts])

    def build() -> torch.Tensor:
        unique = sorted({t for t in texts if t is not None})
        if not unique:
            probe = encoder.encode(["x"])
            return torch.zeros((len(texts), *probe.shape[1:]), dtype=probe.dtype)
        # Per caption in a store shared by every list (each client's share, the hold-out, another
        # partition or seed): a caption is encoded once per node, not once per list it is in.
        store = cache_dir / f"textrows-{_digest([encoder.identity().encode()])}"
        vectors = _stack(
            _store_rows(
                store, [_digest([t.encode()]) for t in unique], lambda idx: encoder.encode([unique[i] for i in idx])
            )
        )
        row = {t: i for i, t in enumerate(unique)}
        # Any row shape: pooled (D,), token states (L, D) or token ids (L,); zero = padding.
        out = torch.zeros((len(texts), *vectors.shape[1:]), dtype=vectors.dtype)
        present = [i for i, t in enumerate(texts) if t is not None]
        out[present] = vectors[[row[t] for t in texts if t is not None]]  # the rows of `present`, in order
        return out

    return _cached(cache_dir / f"text-{key}.safetensors", len(texts), build)


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

    return _cached(cache_dir / f"image-{key}.safetensors", len(paths), build)


def encode_images(paths: list[Path | None], size: int, encoder: ImageEncoder, cache_dir: Path) -> torch.Tensor:
    """Run the image encoder's frozen part once per distinct image (resized to `size`), cached on disk.

    Images are read batch by batch, never all held as pixels; a None path gets a zero row.
    """
    key = _digest(
        [f"{encoder.identity()}|{size}".encode()] + [b"\0missing" if p is None else p.read_bytes() for p in paths]
    )

    def build() -> torch.Tensor:
        present = [i for i, p in enumerate(paths) if p is not None]
        kept = [p for p in paths if p is not None]  # kept[j] is paths[present[j]]
        step = max(1, int(getattr(encoder, "batch_size", 32)))

        def compute(idx: list[int]) -> torch.Tensor:
            chunks = []
            # disable=None: a bar on a terminal, silent in logs and under Ray.
            for start in tqdm(
                range(0, len(idx), step),
                desc=f"encoding {len(idx)} images ({size} px)",
                unit="batch",
                disable=None,
                leave=False,
            ):
                batch = [torch.from_numpy(load_image_array(kept[j], size)) for j in idx[start : start + step]]
                chunks.append(encoder.encode_images(torch.stack(batch)))
            return torch.cat(chunks)

        if not present:
            probe = encoder.encode_images(torch.zeros(1, 3, size, size, dtype=torch.uint8))
            return torch.zeros((len(paths), *probe.shape[1:]), dtype=probe.dtype)
        # Per image in a store shared by every list, as for captions.
        store = cache_dir / f"imagerows-{_digest([f'{encoder.identity()}|{size}'.encode()])}"
        rows = _store_rows(store, [_digest([paths[i].read_bytes()]) for i in present], compute)  # type: ignore[union-attr]
        out = torch.zeros((len(paths), *rows[0].shape), dtype=rows[0].dtype)
        out[present] = torch.stack(rows)
        return out

    return _cached(cache_dir / f"imgfeat-{key}.safetensors", len(paths), build)


def build_tensors(
    memes: list[Meme], encoder: TextEncoder, image_size: int, cache_dir: str | Path, image_encoder: object | None = None
) -> MemeTensors:
    """Return model-ready tensors for `memes`, reusing the on-disk cache.

    With an `image_encoder` that has a frozen part (`encode_images`), the image column holds its
    cached outputs instead of pixels.
    """
    cache = Path(cache_dir) / "features"
    paths = [m.img if m.has_image else None for m in memes]
    if image_encoder is not None and hasattr(image_encoder, "encode_images"):
        image = encode_images(paths, image_size, cast(ImageEncoder, image_encoder), cache)
    else:
        image = load_images(paths, image_size, cache)
    return MemeTensors(
        text=encode_texts([m.text if m.has_text else None for m in memes], encoder, cache),
        image=image,
        label=torch.tensor([m.label for m in memes], dtype=torch.long),
        mask=torch.tensor([[m.has_text, m.has_image] for m in memes], dtype=torch.float32).reshape(-1, 2),
    )
