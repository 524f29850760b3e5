"""A caption branch for any language: hashed character n-grams (fastText-style), fused with a sentence encoder."""

from __future__ import annotations

import hashlib
import unicodedata
import zlib
from typing import Any

import torch
from torch import nn

from fedmemes.models.base import pooled_text


def char_ngrams(text: str, min_n: int, max_n: int) -> list[str]:
    """Return the distinct character n-grams of each word in `<word>` form, and the words, in order of appearance."""
    # NFKC + casefold: full-width, ligature and case variants of one spelling share their n-grams.
    words = unicodedata.normalize("NFKC", text).casefold().split()
    grams: dict[str, None] = {}  # an ordered set: the first max_ngrams kept are the caption's start
    for word in words:
        grams.setdefault(f"w:{word}", None)
        marked = f"<{word}>"
        for n in range(min_n, max_n + 1):
            for i in range(len(marked) - n + 1):
                grams.setdefault(marked[i : i + n], None)
    return list(grams)


def hash_ngrams(grams: list[str], buckets: int) -> list[int]:
    """Map n-grams to bucket ids 1..buckets (0 is padding) with a hash that is the same in every process."""
    # crc32, not hash(): Python salts str hashes per process, and every client must agree on the buckets.
    return [zlib.crc32(g.encode()) % buckets + 1 for g in grams]


class CharNgramText(nn.Module):
    """Bag of hashed character n-grams (trained with the head), beside an optional base encoder such as MiniLM.

    No tokenizer, vocabulary or download: the n-grams of any script, spelling or code-mixed caption
    hash into `buckets` learned vectors whose mean is the caption's n-gram vector (`dim`). The data
    side (`encode`) hashes each caption once into `max_ngrams` bucket ids (0 = padding) followed by
    the base encoder's own inputs (a pooled vector, or token ids for a trainable encoder), in the
    base's dtype; both parts are cached on the node like any text input. `pooled` gives
    LayerNorm(base vector) ++ LayerNorm(n-gram vector), so neither part drowns the other whatever
    their scales. The embedding table (buckets x dim) trains and travels; a frozen base never does.
    """

    def __init__(
        self,
        base: Any | None = None,
        buckets: int = 8192,
        dim: int = 128,
        min_n: int = 2,
        max_n: int = 4,
        max_ngrams: int = 768,
    ) -> None:
        super().__init__()
        if not (buckets >= 1 and dim >= 1 and 1 <= min_n <= max_n and max_ngrams >= 1):
            raise ValueError(
                f"model.text_encoder: need buckets >= 1, dim >= 1, 1 <= min_n <= max_n, max_ngrams >= 1; got "
                f"buckets={buckets} dim={dim} min_n={min_n} max_n={max_n} max_ngrams={max_ngrams}"
            )
        if base is not None and getattr(base, "gives_tokens", False) and not isinstance(base, nn.Module):
            raise ValueError(
                "model.text_encoder.base gives token states (output=tokens), which n-grams cannot sit beside: "
                "use output=pooled, or a trainable base (model/text_encoder=finetune_ngrams)"
            )
        self.base = base  # an nn.Module base (fine-tuned layers) becomes a submodule; a frozen one stays a plain object
        self.buckets, self.min_n, self.max_n, self.max_ngrams = buckets, min_n, max_n, max_ngrams
        # Small init (BERT's 0.02): Adam's steps at fine-tuning rates still move the table within a few rounds.
        self.embed = nn.EmbeddingBag(buckets + 1, dim, mode="mean", padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.ngram_norm = nn.LayerNorm(dim)
        self.base_norm = nn.LayerNorm(int(base.dim)) if base is not None else None
        self.ngram_dim = dim

    @property
    def dim(self) -> int:
        """Width of the pooled vector: the base's plus the n-grams'."""
        return self.ngram_dim + (int(self.base.dim) if self.base is not None else 0)

    @property
    def gives_tokens(self) -> bool:
        """Only pooled vectors: a bag of n-grams has no token states to attend over."""
        return False

    def identity(self) -> str:
        """Return a key that changes whenever the cached inputs could change (hashing settings, base encoder)."""
        base = self.base.identity() if self.base is not None else "none"
        raw = f"charngrams-v1|{self.buckets}|{self.min_n}|{self.max_n}|{self.max_ngrams}|{base}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    def ngram_ids(self, texts: list[str]) -> torch.Tensor:
        """Return bucket ids (N, max_ngrams) int64, zero-padded; a longer caption keeps its first max_ngrams."""
        out = torch.zeros(len(texts), self.max_ngrams, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = hash_ngrams(char_ngrams(text, self.min_n, self.max_n), self.buckets)[: self.max_ngrams]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return n-gram ids then the base's inputs, (N, max_ngrams + W), in the base's dtype (ids < 2^24 are exact)."""
        ids = self.ngram_ids(texts)
        if self.base is None:
            return ids
        base = self.base.encode(texts)
        if base.dim() != 2:
            raise ValueError(f"model.text_encoder.base must give one row per caption (got shape {tuple(base.shape)})")
        return torch.cat([ids.to(base.dtype), base], dim=1)

    def pooled(self, text: torch.Tensor) -> torch.Tensor:
        """Return LayerNorm(base vector) ++ LayerNorm(mean n-gram vector), (B, dim)."""
        bag = self.ngram_norm(self.embed(text[:, : self.max_ngrams].long()))
        if self.base is None or self.base_norm is None:
            return bag
        return torch.cat([self.base_norm(pooled_text(self.base, text[:, self.max_ngrams :])), bag], dim=1)

    def tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Refuse: models that attend over caption tokens need a token encoder."""
        raise ValueError(
            "model.text_encoder=*_ngrams gives pooled vectors only: use it with early_fusion, late_fusion, "
            "feature_interaction or text_only, or pick model/text_encoder=frozen_tokens for cross_attention"
        )
