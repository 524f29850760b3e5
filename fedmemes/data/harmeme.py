"""HarMeme (Pramanick et al. 2021) in MMF's "memes" layout, read as it is and validated like every source.

Layout: `annotations/{train,val,test}.jsonl` + `images/`; one JSON object per line,
`{"id": "covid_memes_18", "image": "covid_memes_18.png", "labels": ["somewhat harmful", "individual"],
"text": "..."}`. `labels[0]` is the harm level (the rest name the target). Each row is mapped to the
original Hateful Memes row (`img`, `label`) and then checked by `LocalDirSource`'s own rules:
missing or unreadable images, bad text, duplicate ids, hold-out overlap, `on_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import Meme

# The literature's binary task (MOMENTA): harmful = somewhat or very harmful.
DEFAULT_LABEL_MAP = {"not harmful": 0, "somewhat harmful": 1, "very harmful": 1}
# MMF split file -> our split name (val is the labelled dev set, test the labelled test set).
SPLIT_FILES = {"train": "train", "dev_seen": "val", "test_seen": "test"}


class HarMemeSource(LocalDirSource):
    """A folder with `annotations/{train,val,test}.jsonl` and `images/`; labels mapped by `label_map`."""

    def __init__(
        self,
        root: str | Path,
        on_error: str = "raise",
        label_map: Mapping[str, int] | None = None,
        images_dir: str = "images",
        **kwargs: Any,
    ) -> None:
        super().__init__(root, on_error=on_error, **kwargs)
        self.label_map = {str(k).strip().lower(): int(v) for k, v in (label_map or DEFAULT_LABEL_MAP).items()}
        bad = {k: v for k, v in self.label_map.items() if v not in (0, 1)}
        if bad:
            raise ValueError(f"dataset.label_map must map harm levels to 0 or 1, got {bad}")
        self.images_dir = images_dir

    def _split_files(self) -> dict[str, Path]:
        """Return the annotation file of every split present; train is required."""
        folder = self.root / "annotations"
        wanted = self.splits or tuple(SPLIT_FILES)
        files = {s: folder / f"{SPLIT_FILES[s]}.jsonl" for s in wanted if s in SPLIT_FILES}
        if not files.get("train", folder / "-").is_file():
            raise FileNotFoundError(
                f"{folder / 'train.jsonl'} not found; dataset=harmeme expects MMF's memes layout: "
                "annotations/{train,val,test}.jsonl plus images/ under dataset.root"
            )
        return {s: p for s, p in files.items() if p.is_file()}

    def _check(self, row: object) -> tuple[list[tuple[str, str]], Meme | None]:
        """Map a HarMeme row (image, labels) to the original layout (img, label), then validate it."""
        if not isinstance(row, dict):
            return super()._check(row)
        mapped = {k: v for k, v in row.items() if k not in ("image", "labels")}
        if "image" in row:
            image = row["image"]
            mapped["img"] = f"{self.images_dir}/{image}" if isinstance(image, str) and image.strip() else image
        problems: list[tuple[str, str]] = []
        labels = row.get("labels")
        if not isinstance(labels, list) or not labels or not isinstance(labels[0], str):
            problems.append(
                (
                    "missing_key" if "labels" not in row else "bad_label",
                    f"labels must be a list whose first item is the harm level, got {labels!r}",
                )
            )
        elif labels[0].strip().lower() not in self.label_map:
            detail = f"harm level {labels[0]!r} is not in dataset.label_map ({sorted(self.label_map)}); add it there"
            problems.append(("bad_label", detail))
        else:
            mapped["label"] = self.label_map[labels[0].strip().lower()]
            if len(labels) > 1 and isinstance(labels[1], str):
                mapped["target"] = labels[1]  # kept as meta (e.g. for partition=natural by target)
        if problems:
            mapped.setdefault("label", 0)  # the row is dropped for its label; still report its other problems
            other, _ = super()._check(mapped)
            return problems + other, None
        return super()._check(mapped)
