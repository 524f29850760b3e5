"""Download the Hugging Face copy of Hateful Memes split by split and read it as a local folder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import huggingface_hub

from fedmemes.data.images import DEFAULT_MAX_PIXELS
from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import SPLITS, DataIssue, Meme
from fedmemes.data.rows import ON_ERROR


class HFHubSource:
    """The HF copy neuralcatcher/hateful_memes: metadata jsonl per split + img/ files, downloaded explicitly (never the
    merged automatic splits), then read as a local folder."""

    def __init__(
        self,
        repo_id: str = "neuralcatcher/hateful_memes",
        splits: Sequence[str] = ("train", "dev_seen", "test_seen"),
        revision: str | None = None,
        cache_dir: str | None = None,
        # "skip": about 535 images of neuralcatcher/hateful_memes are missing, so "raise" always fails.
        on_error: str = "skip",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        unknown = [s for s in splits if s not in SPLITS]
        if unknown or "train" not in splits:
            raise ValueError(f"splits must include 'train' and come from {SPLITS}; got {list(splits)}")
        self.repo_id = repo_id
        self.splits = tuple(splits)
        self.revision = revision
        self.cache_dir = cache_dir
        self.on_error = on_error
        self.max_image_pixels = max_image_pixels
        self.issues: list[DataIssue] = []
        if on_error not in ON_ERROR:  # fail before a long download, not after
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")

    def download(self) -> Path:
        """Fetch the split jsonl files and img/ (cached by huggingface_hub); return the local folder."""
        try:
            # Explicit per-split files: the dataset's automatic config merges dev_seen+dev_unseen
            # and test_seen+test_unseen, which mixes evaluation sets.
            downloaded = huggingface_hub.snapshot_download(
                repo_id=self.repo_id,
                repo_type="dataset",
                revision=self.revision,
                cache_dir=self.cache_dir,
                allow_patterns=[f"{s}.jsonl" for s in self.splits] + ["img/*"],
            )
        except Exception as e:  # the hub client raises many network/HTTP types; all mean "no data"
            raise RuntimeError(
                f"could not download dataset {self.repo_id!r} (revision {self.revision or 'main'}) "
                f"from the Hugging Face Hub: the hub could not be reached or refused the request "
                f"({type(e).__name__}: {e}). With a local copy in the original layout, use "
                f"dataset=hateful_memes dataset.root=DIR instead"
            ) from e
        folder = Path(downloaded)
        for split in self.splits:
            if not (folder / f"{split}.jsonl").is_file():
                raise FileNotFoundError(
                    f"{split}.jsonl not found in dataset {self.repo_id!r} (revision "
                    f"{self.revision or 'main'}, downloaded to {folder}); pick splits that the "
                    f"repo holds, from {SPLITS}"
                )
        return folder

    def load(self) -> dict[str, list[Meme]]:
        """Download if needed, then validate and return the requested splits."""
        source = LocalDirSource(
            self.download(), on_error=self.on_error, max_image_pixels=self.max_image_pixels, splits=self.splits
        )
        memes = source.load()
        self.issues = source.issues
        return memes
