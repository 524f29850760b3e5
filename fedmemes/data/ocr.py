"""Captions from the picture: Tesseract OCR of a meme's image, cached by the image's content hash.

Tesseract (Debian's `tesseract-ocr`, language packs `tesseract-ocr-LANG`) through `pytesseract`:
it runs offline from files the system package installs, and reads ~100 languages (Hindi etc.),
which matters to members whose memes are not in English. Meme captions are white block letters
with a dark outline on a busy picture; `preprocess` keeps the bright strokes as black on white
before Tesseract sees them, and leaves screenshots (dark text on a light ground) as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage

from fedmemes.bookkeeping.private_files import write_text
from fedmemes.data.meme import Meme

log = logging.getLogger(__name__)

OCR_MODES = ("missing", "always", "never")
INSTALL = "apt-get install tesseract-ocr"
# Bumped when preprocessing or word filtering changes: older cache entries are then not reused.
VERSION = "v2"
_BRIGHT = 190  # luminance of a meme's white letters (0-255); their dark outline stays below it
_LIGHT_GROUND = 0.4  # share of bright pixels above which the picture is a light page (a screenshot)
_DARK = 128  # luminance below which a pixel around a bright shape counts as its outline
_DARK_SHARE = 0.3  # share of a shape's ring that must be dark for the shape to be read as letters
_RING = 9  # px (after scaling): the ring's width, past the anti-aliased edge into the outline
_SPECK = 15  # px: brighter specks than this are texture, not letters
_MIN_CONF = 30  # Tesseract's word confidence (0-100) below which a "word" is texture read as letters
_TARGET_SIDE = 1400  # px: Tesseract reads best with letters some 30+ px high

Engine = Callable[[Image.Image, str], str]


class OcrUnavailable(FileNotFoundError):
    """Tesseract or one of its language packs is not installed: the message says what to install."""


def preprocess(image: Image.Image) -> Image.Image:
    """Return the page to read, scaled so its letters are tall enough: a light page (a screenshot) as grayscale,
    any other picture as its outlined bright shapes (meme captions: white letters, dark outline) black on white.

    Bright shapes count as letters when enough of the ring around them is dark: a white letter's outline
    is, a bright patch of sky or shirt mostly is not. On 40 HarMeme memes this read 0.47 CER against 0.50
    for every bright pixel, 0.63 for the plain grayscale picture; reading two pages and keeping the
    more confident text cost twice the time for 1% less error.
    """
    gray = ImageOps.grayscale(image.convert("RGB"))
    scale = min(3.0, _TARGET_SIDE / max(gray.size))
    if abs(scale - 1) > 0.1:
        gray = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))), Image.Resampling.LANCZOS
        )
    lum = np.asarray(gray)
    bright = lum >= _BRIGHT
    if bright.mean() > _LIGHT_GROUND:
        return gray  # dark text on a light ground: Tesseract's own binarisation reads it
    labels, n = ndimage.label(bright)
    grown = ndimage.grey_dilation(labels, size=_RING)  # each shape's label spread a few pixels around it
    ring = (grown > 0) & ~bright
    around = np.bincount(grown[ring], minlength=n + 1)
    dark = np.bincount(grown[ring & (lum < _DARK)], minlength=n + 1)
    keep = (dark >= _DARK_SHARE * np.maximum(around, 1)) & (np.bincount(labels.ravel(), minlength=n + 1) >= _SPECK)
    keep[0] = False  # label 0: the background
    ink = np.where(keep[labels], 0, 255).astype(np.uint8)
    return Image.fromarray(ink).filter(ImageFilter.MedianFilter(3))  # smooths the letters' jagged edges


def tesseract(image: Image.Image, lang: str) -> str:
    """Read `image` with Tesseract; keep words it is reasonably sure of, one text line per line."""
    import pytesseract

    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise OcrUnavailable(
            f"OCR needs the tesseract program, which is not on PATH: install it with `{INSTALL}` "
            "(Debian/Ubuntu; `brew install tesseract` on macOS), or set dataset.ocr=never"
        )
    langs = _languages(pytesseract.pytesseract.tesseract_cmd)
    missing = [x for x in lang.split("+") if x not in langs]
    if missing:
        packs = " ".join(f"tesseract-ocr-{x}" for x in missing)
        raise OcrUnavailable(
            f"tesseract has no language pack {'+'.join(missing)} (it has {', '.join(sorted(langs))}): "
            f"install it with `apt-get install {packs}`, or pick one it has (--lang / dataset.ocr_lang)"
        )
    data = pytesseract.image_to_data(image, lang=lang, config="--psm 3", output_type=pytesseract.Output.DICT)
    lines: dict[tuple[int, int, int], list[str]] = {}
    for word, conf, *where in zip(
        data["text"], data["conf"], data["block_num"], data["par_num"], data["line_num"], strict=True
    ):
        if word.strip() and float(conf) >= _MIN_CONF:
            lines.setdefault((where[0], where[1], where[2]), []).append(word.strip())
    return "\n".join(" ".join(words) for words in lines.values())


@functools.lru_cache(maxsize=4)
def _languages(cmd: str) -> frozenset[str]:
    """Return the language packs `cmd` has (asked once per process: it is a subprocess)."""
    import pytesseract

    return frozenset(pytesseract.get_languages(config=""))


class OcrReader:
    """Read the caption in an image, once per image content: results live in `<cache_dir>/ocr/` (0600, atomic)."""

    def __init__(self, cache_dir: str | Path, lang: str = "eng", engine: Engine | None = None) -> None:
        self.lang = lang
        self.engine = engine or tesseract
        self.folder = Path(cache_dir) / "ocr" / f"tesseract-{lang}-{VERSION}"
        # Tesseract's OpenMP threads slow it down on a shared box; one image per thread is faster.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")

    def read(self, image_path: str | Path) -> str:
        """Return the text in the image at `image_path` (from the cache when this content was read before)."""
        data = Path(image_path).read_bytes()
        entry = self.folder / f"{hashlib.sha256(data).hexdigest()}.txt"
        try:
            return entry.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            pass  # never read, or a damaged entry: read it again
        with Image.open(image_path) as image:
            text = self.engine(preprocess(image), self.lang)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_text(entry, text)
        except OSError as e:  # a full or read-only cache: the text is still right, only not kept
            log.warning("ocr cache: cannot write %s (%s); continuing without caching it", entry, e)
        return text

    def read_many(self, paths: Iterable[str | Path], workers: int = 1) -> list[str]:
        """Return the text of each image, `workers` at a time (Tesseract runs as a separate process)."""
        paths = list(paths)
        done = 0

        def one(path: str | Path) -> str:
            nonlocal done
            text = self.read(path)
            done += 1
            if done % 250 == 0:
                log.info("ocr: %d of %d images read", done, len(paths))
            return text

        if workers <= 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, paths))


def needs_caption(meme: Meme, mode: str) -> bool:
    """Whether `mode` asks OCR for this meme's caption (an image it can read is required)."""
    if mode not in OCR_MODES:
        raise ValueError(f"dataset.ocr={mode} is not allowed: dataset.ocr must be one of {', '.join(OCR_MODES)}")
    if mode == "never" or not meme.has_image:
        return False
    return mode == "always" or not (meme.has_text and meme.text.strip())


def fill_captions(memes: list[Meme], mode: str, reader: OcrReader, workers: int = 1) -> list[Meme]:
    """Return `memes` with OCR captions (`text_source="ocr"`): `missing` fills empty ones, `always` replaces all."""
    todo = [i for i, m in enumerate(memes) if needs_caption(m, mode)]
    if not todo:
        return list(memes)
    out = list(memes)
    texts = reader.read_many([memes[i].img for i in todo], workers)
    for i, text in zip(todo, texts, strict=True):
        caption = " ".join(text.split())  # captions are one line, as the sources give them
        out[i] = dataclasses.replace(memes[i], text=caption, has_text=bool(caption), text_source="ocr")
    log.info("ocr (%s): %d of %d captions read from the images", mode, len(todo), len(memes))
    return out


def char_error_rate(reference: str, hypothesis: str) -> float:
    """Return the Levenshtein distance of the two texts over the reference's length (case and spacing normalised)."""
    ref, hyp = (" ".join(t.lower().split()) for t in (reference, hypothesis))
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1] / max(1, len(ref))
