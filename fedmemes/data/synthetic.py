"""Generate a small synthetic hateful-memes dataset in the original layout, cached by its parameters.

Two generators, chosen by `version` (`dataset.source.version`, default 2):

- version 2 (fedmemes/data/synthetic_v2.py): the caption alone and the picture alone each carry
  some signal (best unimodal AUROC about 0.66 and 0.59), some captions hold explicit hateful
  phrases, benign confounders flip the label by swapping the picture, labels are noisy
  (`label_noise`, default 0.05), pictures hold several objects with the caption drawn on them.
  Its docstring states the generative rule.
- version 1 (this module): label = t XOR v of two binary concepts, neither modality alone beats
  chance, no label noise. Each meme draws:

  - t, the caption topic: t=1 captions talk about a group of PEOPLE (neighbours, coworkers,
    tourists, ...), t=0 captions talk about THINGS (pizza, the weather, traffic, ...). Captions
    are template x subject x ending, and only the subject carries the topic, so a sentence
    encoder (e.g. MiniLM) separates the topics easily.
  - v, the image concept: v=1 is a warm background (reds/oranges) with pointed shapes
    (triangles, stars); v=0 a cool background (greens/blues) with round shapes (circles,
    ellipses). Hue, size, position and count are jittered; small neutral distractors and pixel
    noise are added.

  Within each split the four (t, v) cells are equally filled (shuffled), so P(label | caption) =
  P(label | image) = 0.5: the pair predicts exactly, and like the real "benign confounders" the
  same caption appears with both image concepts and flips its label. The caption is drawn on
  the image like a meme.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import Meme
from fedmemes.data.synthetic_draw import (
    ENDINGS,
    PEOPLE,
    TEMPLATES,
    THINGS,
    color,
    draw_objects,
    text_layer,
)
from fedmemes.data.synthetic_v2 import generate_v2

VERSIONS = (1, 2)


def caption(rng: np.random.Generator, topic: int) -> str:
    """Draw a caption whose subject is people (topic 1) or things (topic 0)."""
    subjects = PEOPLE if topic else THINGS
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(s=subjects[rng.integers(len(subjects))], e=ENDINGS[rng.integers(len(ENDINGS))])


def caption_topic(text: str) -> int:
    """Return the topic of a generated caption: 1 if its subject is people, 0 if things."""
    if any(s in text for s in PEOPLE):
        return 1
    if any(s in text for s in THINGS):
        return 0
    raise ValueError(f"not a synthetic caption (no known subject): {text!r}")


def image_concept(pixels: np.ndarray) -> int:
    """Return the image concept of a generated (H, W, 3) image: 1 if warm (red > blue on average)."""
    mean = pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)
    # Warm backgrounds have red - blue >= ~80; cool ones <= 0; text and noise are neutral.
    return int(mean[0] - mean[2] > 30)


def render(rng: np.random.Generator, concept: int, text: tuple[Image.Image, Image.Image], size: int) -> Image.Image:
    """Draw one meme image of the given concept with its caption layer on top or bottom."""
    img = Image.new("RGB", (size, size), color(rng, concept, (0.45, 0.75), (0.8, 1.0)))
    draw = ImageDraw.Draw(img)
    draw_objects(rng, draw, concept, int(rng.integers(2, 5)), size, (0.08, 0.18), (0.75, 1.0), (0.45, 0.7))
    for _ in range(rng.integers(1, 4)):  # neutral grey distractors, neither round nor pointed
        x, y = rng.uniform(0, size * 0.9, 2)
        w, h = size * rng.uniform(0.03, 0.1, 2)
        grey = int(rng.integers(60, 200))
        draw.rectangle((x, y, x + w, y + h), fill=(grey, grey, grey))

    mask, outline = text
    y = 1 if rng.random() < 0.5 else size - 1 - mask.height
    img.paste((20, 20, 20), (0, y), outline)
    img.paste((255, 255, 255), (0, y), mask)

    noise = rng.integers(-6, 7, (size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def generate(
    out_dir: Path,
    n_train: int,
    n_dev: int,
    n_test: int,
    seed: int,
    image_size: int,
    version: int = 2,
    label_noise: float = 0.05,
) -> Path:
    """Write a synthetic dataset in the original layout into out_dir (new or empty) and return it.

    `label_noise` (the share of flipped labels) applies to version 2 only.
    """
    counts = {"train": n_train, "dev_seen": n_dev, "test_seen": n_test}
    total = sum(counts.values())
    if min(counts.values()) < 0 or n_train < 4 or total > 100_000 or image_size < 16:
        raise ValueError(
            f"need n_train >= 4, n_dev/n_test >= 0, total <= 100000 (5-digit ids) "
            f"and image_size >= 16; got {counts}, image_size={image_size}"
        )
    if version not in VERSIONS or not 0.0 <= label_noise < 0.5:
        raise ValueError(
            f"dataset.source.version must be one of {VERSIONS} (got {version}) and "
            f"dataset.source.label_noise in [0, 0.5) (got {label_noise})"
        )
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.choice(100_000, size=total, replace=False)
    if version == 2:
        return generate_v2(out_dir, counts, ids, rng, image_size, label_noise)
    font = ImageFont.load_default(size=max(8, image_size // 10))
    layers: dict[str, tuple[Image.Image, Image.Image]] = {}  # captions repeat: render each once
    start = 0
    for split, n in counts.items():
        cells = rng.permutation(np.arange(n) % 4)  # equal (t, v) cells make each modality alone useless
        rows = []
        for meme_id, cell in zip(ids[start : start + n], cells, strict=True):
            topic, concept = int(cell // 2), int(cell % 2)
            text = caption(rng, topic)
            if text not in layers:
                layers[text] = text_layer(text, image_size, font)
            rel = f"img/{meme_id:05d}.png"
            render(rng, concept, layers[text], image_size).save(out_dir / rel, compress_level=1)
            rows.append({"id": int(meme_id), "img": rel, "label": topic ^ concept, "text": text})
        start += n
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return out_dir


class SyntheticSource:
    """A cached synthetic dataset: generated once per parameter set under root, then read as a folder."""

    def __init__(
        self,
        root: str | Path,
        n_train: int = 2000,
        n_dev: int = 300,
        n_test: int = 600,
        seed: int = 0,
        image_size: int = 96,
        version: int = 2,
        label_noise: float = 0.05,
    ) -> None:
        self.root = Path(root).expanduser().absolute()
        self.params: dict[str, Any] = {
            "n_train": n_train,
            "n_dev": n_dev,
            "n_test": n_test,
            "seed": seed,
            "image_size": image_size,
            "version": version,
            "label_noise": label_noise,
        }

    @property
    def folder(self) -> Path:
        """Return the cache folder for these parameters."""
        params, version = dict(self.params), self.params["version"]
        if version == 1:  # version 1 ignores label_noise and keeps the key it always had
            del params["version"], params["label_noise"]
        key = json.dumps([params, version], sort_keys=True)
        return self.root / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    def ensure(self) -> Path:
        """Generate the dataset unless its folder exists; return the folder."""
        final = self.folder
        if not final.is_dir():
            self.root.mkdir(parents=True, exist_ok=True)
            # Build beside the target and rename: a crash or a racing process never leaves half a folder.
            tmp = self.root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                generate(tmp, **self.params)
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # rename lost a race only if the other copy is there
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def load(self) -> dict[str, list[Meme]]:
        """Return the memes of train, dev_seen and test_seen, generating them on first use."""
        # Images were just written by us: skip the decode check, keep the layout validation.
        return LocalDirSource(self.ensure(), on_error="raise", check_images=False).load()
