"""Version 2 of the synthetic memes: each modality carries some signal, the pair carries most of it.

Every meme has three hidden facts, drawn per meme:

- t, the caption's target: 1 = a group of PEOPLE (neighbours, tourists, ...), 0 = THINGS
  (mondays, pizza, ...), as in version 1;
- cue: whether the caption holds an explicit hateful phrase ("... are a plague", "... should be
  banned"); the phrase is the same whether it is aimed at people or at things;
- v, the picture's concept: 1 = warm pointed objects (triangles, stars), 0 = cool round ones
  (circles, ellipses), drawn as 2-4 objects over a pale background of any hue, with at most one
  smaller decoy object of the other concept and 1-3 grey distractors. The caption is drawn on
  the picture (white with a dark outline, top or bottom) as memes have it.

The label is

    clean = 1                   if cue and t = 1   (explicit hate: the phrase aimed at people)
    clean = t XOR v             otherwise          (the pair decides)
    label = clean, flipped with probability label_noise   (annotators disagree)

Kinds of memes and their shares (of all memes):

- explicit (EXPLICIT_SHARE): t = 1 with a cue; v is a fair coin. Hateful from the caption alone.
- cue confounders (CUE_CONFOUNDER_SHARE): t = 0 with a cue ("mondays should be banned"); the pair
  rule decides, so a text model must read whom the phrase is aimed at, not just the phrase.
- subtle (the rest): (t, v) drawn from CELLS, label t XOR v. The cells are uneven, so that the
  caption's target and the picture's concept each lean towards a label without deciding it.
- benign confounders: a subtle meme is followed, with probability TWIN_SHARE, by its twin in the
  same split: the same caption over a picture of the other concept, hence the other label.

With the default shares the best possible scores of a model that sees one modality are about
0.66 AUROC for the caption (t and cue) and 0.59 for the picture (v), while the pair reaches the
ceiling that label noise leaves (about 1 - label_noise); tests/test_synthetic.py checks these
on generated data.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fedmemes.data.synthetic_draw import (
    ENDINGS,
    PEOPLE,
    TEMPLATES,
    THINGS,
    draw_objects,
    text_layer,
)

EXPLICIT_SHARE = 0.15
CUE_CONFOUNDER_SHARE = 0.06
TWIN_SHARE = 0.15
# P(t, v) of subtle memes, as [[t=0,v=0], [t=0,v=1]], [[t=1,v=0], [t=1,v=1]]. Label = t XOR v, so
# (0,1) and (1,0) are hateful; (1,1) rarest makes "people" and "warm" each lean hateful.
CELLS = np.array([[0.33, 0.25], [0.28, 0.14]])
CUES = (
    "are a plague",
    "should be banned",
    "need to disappear",
    "are worse than rats",
    "should be thrown out",
    "are a disease",
)
CUE_TEMPLATES = ("{s} {c}", "honestly {s} {c}", "{s} {c}. change my mind", "reminder that {s} {c}")


def caption_v2(rng: np.random.Generator, topic: int, cue: bool) -> str:
    """Draw a caption about people (topic 1) or things (topic 0), with an explicit cue or not."""
    subjects = PEOPLE if topic else THINGS
    s = subjects[rng.integers(len(subjects))]
    if cue:
        return CUE_TEMPLATES[rng.integers(len(CUE_TEMPLATES))].format(s=s, c=CUES[rng.integers(len(CUES))])
    return TEMPLATES[rng.integers(len(TEMPLATES))].format(s=s, e=ENDINGS[rng.integers(len(ENDINGS))])


def caption_cue(text: str) -> int:
    """Return 1 if a generated caption holds an explicit hateful phrase."""
    return int(any(c in text for c in CUES))


def image_concept_v2(pixels: np.ndarray) -> int:
    """Return the concept of a version-2 picture: 1 if its saturated pixels are mostly warm."""
    hsv = np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("HSV"), dtype=np.int32)
    # Objects are saturated (>= 0.75 * 255); the pale background, grey boxes and caption are not.
    saturated = hsv[..., 1] >= 170
    hue = hsv[..., 0][saturated] / 255.0
    warm = ((hue <= 0.12) | (hue >= 0.97)).sum()
    cool = ((hue >= 0.37) & (hue <= 0.67)).sum()
    return int(warm > cool)


def true_label(topic: int, cue: int, concept: int) -> int:
    """Return the clean label of the generative rule (see the module docstring)."""
    return 1 if (cue and topic) else topic ^ concept


def draw_latents(rng: np.random.Generator, n: int, label_noise: float) -> list[dict[str, int]]:
    """Draw n memes' hidden facts: topic, cue, concept, clean label, label, twin (1 = benign confounder)."""
    rows: list[dict[str, int]] = []
    flat = CELLS.ravel() / CELLS.sum()
    while len(rows) < n:
        kind = rng.random()
        if kind < EXPLICIT_SHARE:
            t, cue, v = 1, 1, int(rng.random() < 0.5)
        elif kind < EXPLICIT_SHARE + CUE_CONFOUNDER_SHARE:
            t, cue, v = 0, 1, int(rng.random() < 0.5)
        else:
            cell = int(rng.choice(4, p=flat))
            t, cue, v = cell // 2, 0, cell % 2
        rows.append({"topic": t, "cue": cue, "concept": v, "twin": 0})
        if not cue and len(rows) < n and rng.random() < TWIN_SHARE:
            rows.append({"topic": t, "cue": 0, "concept": 1 - v, "twin": 1})
    for row in rows:
        row["clean"] = true_label(row["topic"], row["cue"], row["concept"])
        row["label"] = row["clean"] ^ int(rng.random() < label_noise)
    return rows


def render_v2(
    rng: np.random.Generator, concept: int, text: tuple[Image.Image, Image.Image], size: int, top: bool
) -> Image.Image:
    """Draw a version-2 meme picture: pale background, several objects, the caption on top or bottom."""
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.25), rng.uniform(0.75, 0.95))
    img = Image.new("RGB", (size, size), (int(r * 255), int(g * 255), int(b * 255)))
    draw = ImageDraw.Draw(img)
    draw_objects(rng, draw, concept, int(rng.integers(2, 5)), size, (0.08, 0.16), (0.8, 1.0), (0.5, 0.8))
    if rng.random() < 0.5:  # a decoy of the other concept: smaller and alone, it never outweighs the rest
        draw_objects(rng, draw, 1 - concept, 1, size, (0.05, 0.08), (0.8, 1.0), (0.5, 0.8))
    for _ in range(rng.integers(1, 4)):  # grey distractors, neither round nor pointed
        x, y = rng.uniform(0, size * 0.9, 2)
        w, h = size * rng.uniform(0.03, 0.1, 2)
        grey = int(rng.integers(60, 200))
        draw.rectangle((x, y, x + w, y + h), fill=(grey, grey, grey))
    mask, outline = text
    y = 1 if top else size - 1 - mask.height
    img.paste((20, 20, 20), (0, y), outline)
    img.paste((255, 255, 255), (0, y), mask)
    noise = rng.integers(-6, 7, (size, size, 3), dtype=np.int16)
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8))


def draw_memes(rng: np.random.Generator, n: int, label_noise: float) -> list[dict[str, Any]]:
    """Draw n memes' hidden facts (see draw_latents) and their captions ("text"); a twin keeps its original's."""
    memes: list[dict[str, Any]] = []
    for latent in draw_latents(rng, n, label_noise):
        text = memes[-1]["text"] if latent["twin"] else caption_v2(rng, latent["topic"], bool(latent["cue"]))
        memes.append({**latent, "text": text})
    return memes


def generate_v2(
    out_dir: Path,
    counts: dict[str, int],
    ids: np.ndarray,
    rng: np.random.Generator,
    image_size: int,
    label_noise: float,
) -> Path:
    """Write version-2 memes for each split into out_dir (img/ already exists); return out_dir."""
    font = ImageFont.load_default(size=max(8, image_size // 10))
    layers: dict[str, tuple[Image.Image, Image.Image]] = {}  # captions repeat: render each once
    start = 0
    for split, n in counts.items():
        rows = []
        for meme_id, meme in zip(ids[start : start + n], draw_memes(rng, n, label_noise), strict=True):
            text = meme["text"]
            if text not in layers:
                layers[text] = text_layer(text, image_size, font)
            rel = f"img/{meme_id:05d}.png"
            render_v2(rng, meme["concept"], layers[text], image_size, rng.random() < 0.5).save(
                out_dir / rel, compress_level=1
            )
            rows.append({"id": int(meme_id), "img": rel, "label": meme["label"], "text": text})
        start += n
        with (out_dir / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return out_dir
