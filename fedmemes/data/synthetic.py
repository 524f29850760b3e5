"""Generate a small synthetic hateful-memes dataset where only the text+image pair predicts the label.

Each meme draws two binary concepts:

- t, the caption topic: t=1 captions talk about a group of PEOPLE (neighbours, coworkers,
  tourists, ...), t=0 captions talk about THINGS (pizza, the weather, traffic, ...). Captions are
  template x subject x ending, and only the subject carries the topic, so a sentence encoder
  (e.g. MiniLM) separates the topics easily.
- v, the image concept: v=1 is a warm background (reds/oranges) with pointed shapes (triangles,
  stars); v=0 a cool background (greens/blues) with round shapes (circles, ellipses). Hue, size,
  position and count are jittered; small neutral distractors and pixel noise are added.

label = t XOR v. Within each split the four (t, v) cells are equally filled (shuffled), so
P(label | caption) = P(label | image) = 0.5: neither modality alone beats chance, the pair
predicts exactly, and like the real "benign confounders" the same caption appears with both
image concepts and flips its label. The caption is drawn on the image like a meme.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import textwrap
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import Meme

# Bump when the output for the same arguments changes, so old caches are not reused.
GENERATOR_VERSION = 1

PEOPLE = ("my neighbours", "the new coworkers", "tourists", "the new students", "landlords",
          "my in-laws", "my roommates", "the guys at the gym", "commuters", "the interns",
          "the people upstairs", "the other parents at pickup")
THINGS = ("mondays", "pizza slices", "the weather forecasts", "traffic jams", "phone chargers",
          "office printers", "leftovers", "rainy weekends", "alarm clocks", "parking tickets",
          "cold fries", "software updates")
TEMPLATES = ("when {s} {e}", "{s} {e} and nobody talks about it", "me: i'm fine. also me: {s} {e}",
             "can't believe {s} {e}")
ENDINGS = ("show up every single day", "ruin the whole weekend", "are the reason i need coffee",
           "never change", "are everywhere this time of year", "make no sense",
           "test my patience", "are getting out of hand")

# Hue ranges (0..1): warm stays within red-orange, cool within green-blue, so red > blue only if warm.
_WARM_HUES = (0.0, 0.09)
_COOL_HUES = (0.40, 0.62)


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


def _color(rng: np.random.Generator, warm: int, sat: tuple[float, float], val: tuple[float, float]) -> tuple[int, int, int]:
    """Draw an RGB colour from the warm or cool palette."""
    h = rng.uniform(*(_WARM_HUES if warm else _COOL_HUES))
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _star(cx: float, cy: float, r: float, points: int, turn: float) -> list[tuple[float, float]]:
    """Return the vertices of a star polygon (points=3 with no inner radius makes a triangle)."""
    if points == 3:
        angles = turn + np.arange(3) * 2 * np.pi / 3
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    angles = turn + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * 0.45)
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]


def text_layer(text: str, size: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[Image.Image, Image.Image]:
    """Return (fill mask, outline mask) of the wrapped caption, centred, size pixels wide."""
    sample = "the quick brown fox jumps over a lazy dog"
    chars = max(8, int((size - 6) * len(sample) / font.getlength(sample)))
    lines = textwrap.wrap(text, width=chars)
    line_h = font.getbbox("Ag")[3] + 2
    mask = Image.new("L", (size, line_h * len(lines) + 2), 0)
    draw = ImageDraw.Draw(mask)
    for i, line in enumerate(lines):
        draw.text(((size - font.getlength(line)) / 2, 1 + i * line_h), line, font=font, fill=255)
    # A 3x3 dilation gives the meme outline at a fraction of the cost of FreeType's stroker.
    return mask, mask.filter(ImageFilter.MaxFilter(3))


def render(rng: np.random.Generator, concept: int, text: tuple[Image.Image, Image.Image], size: int) -> Image.Image:
    """Draw one meme image of the given concept with its caption layer on top or bottom."""
    img = Image.new("RGB", (size, size), _color(rng, concept, (0.45, 0.75), (0.8, 1.0)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 5)):
        r = size * rng.uniform(0.08, 0.18)
        cx, cy = rng.uniform(r, size - r, 2)
        fill = _color(rng, concept, (0.75, 1.0), (0.45, 0.7))
        if concept:
            draw.polygon(_star(cx, cy, r, int(rng.choice([3, 5])), rng.uniform(0, 2 * np.pi)), fill=fill)
        else:
            ry = r * rng.uniform(0.6, 1.0)
            draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=fill)
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


def generate(out_dir: Path, n_train: int, n_dev: int, n_test: int, seed: int, image_size: int) -> Path:
    """Write a synthetic dataset in the original layout into out_dir (new or empty) and return it."""
    counts = {"train": n_train, "dev_seen": n_dev, "test_seen": n_test}
    total = sum(counts.values())
    if min(counts.values()) < 0 or n_train < 4 or total > 100_000 or image_size < 16:
        raise ValueError(f"need n_train >= 4, n_dev/n_test >= 0, total <= 100000 (5-digit ids) "
                         f"and image_size >= 16; got {counts}, image_size={image_size}")
    out_dir = Path(out_dir)
    (out_dir / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = rng.choice(100_000, size=total, replace=False)
    font = ImageFont.load_default(size=max(8, image_size // 10))
    layers: dict[str, tuple[Image.Image, Image.Image]] = {}  # captions repeat: render each once
    start = 0
    for split, n in counts.items():
        cells = rng.permutation(np.arange(n) % 4)  # equal (t, v) cells make each modality alone useless
        rows = []
        for meme_id, cell in zip(ids[start:start + n], cells):
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

    def __init__(self, root: str | Path, n_train: int = 2000, n_dev: int = 300, n_test: int = 600,
                 seed: int = 0, image_size: int = 96) -> None:
        self.root = Path(root).expanduser().absolute()
        self.params = {"n_train": n_train, "n_dev": n_dev, "n_test": n_test, "seed": seed,
                       "image_size": image_size}

    @property
    def folder(self) -> Path:
        """Return the cache folder for these parameters."""
        key = json.dumps([self.params, GENERATOR_VERSION], sort_keys=True)
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
