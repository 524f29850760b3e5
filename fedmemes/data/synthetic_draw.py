"""Drawing pieces shared by the synthetic generators: caption vocabulary, palettes, shapes, caption layer."""

from __future__ import annotations

import colorsys
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

PEOPLE = (
    "my neighbours",
    "the new coworkers",
    "tourists",
    "the new students",
    "landlords",
    "my in-laws",
    "my roommates",
    "the guys at the gym",
    "commuters",
    "the interns",
    "the people upstairs",
    "the other parents at pickup",
)
THINGS = (
    "mondays",
    "pizza slices",
    "the weather forecasts",
    "traffic jams",
    "phone chargers",
    "office printers",
    "leftovers",
    "rainy weekends",
    "alarm clocks",
    "parking tickets",
    "cold fries",
    "software updates",
)
TEMPLATES = (
    "when {s} {e}",
    "{s} {e} and nobody talks about it",
    "me: i'm fine. also me: {s} {e}",
    "can't believe {s} {e}",
)
ENDINGS = (
    "show up every single day",
    "ruin the whole weekend",
    "are the reason i need coffee",
    "never change",
    "are everywhere this time of year",
    "make no sense",
    "test my patience",
    "are getting out of hand",
)

# Hue ranges (0..1): warm stays within red-orange, cool within green-blue, so red > blue only if warm.
_WARM_HUES = (0.0, 0.09)
_COOL_HUES = (0.40, 0.62)


def color(
    rng: np.random.Generator, warm: int, sat: tuple[float, float], val: tuple[float, float]
) -> tuple[int, int, int]:
    """Draw an RGB colour from the warm or cool palette."""
    h = rng.uniform(*(_WARM_HUES if warm else _COOL_HUES))
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def star(cx: float, cy: float, r: float, points: int, turn: float) -> list[tuple[float, float]]:
    """Return the vertices of a star polygon (points=3 with no inner radius makes a triangle)."""
    if points == 3:
        angles = turn + np.arange(3) * 2 * np.pi / 3
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]
    angles = turn + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, r, r * 0.45)
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles, strict=True)]


def text_layer(
    text: str, size: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
) -> tuple[Image.Image, Image.Image]:
    """Return (fill mask, outline mask) of the wrapped caption, centred, size pixels wide."""
    sample = "the quick brown fox jumps over a lazy dog"
    chars = max(8, int((size - 6) * len(sample) / font.getlength(sample)))
    lines = textwrap.wrap(text, width=chars)
    line_h = int(font.getbbox("Ag")[3]) + 2  # FreeType fonts give ints; the bitmap default may give floats
    mask = Image.new("L", (size, line_h * len(lines) + 2), 0)
    draw = ImageDraw.Draw(mask)
    for i, line in enumerate(lines):
        draw.text(((size - font.getlength(line)) / 2, 1 + i * line_h), line, font=font, fill=255)
    # A 3x3 dilation gives the meme outline at a fraction of the cost of FreeType's stroker.
    return mask, mask.filter(ImageFilter.MaxFilter(3))


def draw_objects(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    concept: int,
    count: int,
    size: int,
    scale: tuple[float, float],
    sat: tuple[float, float],
    val: tuple[float, float],
) -> None:
    """Draw count objects of a concept: warm pointed shapes (1) or cool round ones (0)."""
    for _ in range(count):
        r = size * rng.uniform(*scale)
        cx, cy = rng.uniform(r, size - r, 2)
        fill = color(rng, concept, sat, val)
        if concept:
            draw.polygon(star(cx, cy, r, int(rng.choice([3, 5])), rng.uniform(0, 2 * np.pi)), fill=fill)
        else:
            ry = r * rng.uniform(0.6, 1.0)
            draw.ellipse((cx - r, cy - ry, cx + r, cy + ry), fill=fill)
