"""Open messy meme image files safely and turn them into RGB arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
# The only formats Pillow may try: others (EPS runs Ghostscript, exotic codecs) are never parsed.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")

# Modes that carry an alpha channel; they are composited on white (memes are viewed on white pages).
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and why.

    `kind` is the DataIssue kind: "missing_image", "unreadable_image" or "image_too_large".
    """

    def __init__(self, path: Path | str, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: {detail}")


def _too_large(path: Path, width: int, height: int, max_pixels: int) -> ImageError:
    """Build the error for an image over the pixel limit."""
    return ImageError(
        path,
        "image_too_large",
        f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,} "
        "(decompression-bomb guard); shrink the image or raise max_image_pixels",
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, compositing transparency on white."""
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        # 16/32-bit greyscale: Pillow's convert clips at 255, so rescale 16-bit ranges first.
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return img.convert("RGB")


def open_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open an allowed format (PNG, JPEG, GIF, WEBP, BMP) whatever the extension (JPEG/WEBP bytes behind .png), reject
    images over max_pixels (decompression bomb) BEFORE decoding, fully load (catches truncated files), convert RGBA/LA
    (composite on white), palette (P, incl. transparency), greyscale, CMYK etc to RGB."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "missing_image", "file not found; check the 'img' path in the jsonl")
    try:
        # Image.open reads only the header, so the size check below runs before any decoding.
        with Image.open(path, formats=ALLOWED_FORMATS) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise _too_large(path, width, height, max_pixels)
            img.load()
            # Phone photos store their rotation in EXIF; apply it so the meme is upright.
            return _to_rgb(ImageOps.exif_transpose(img))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        # Pillow's own guard fires in Image.open for sizes far above its MAX_IMAGE_PIXELS.
        raise ImageError(path, "image_too_large", f"{e}; shrink the image") from e
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError) as e:
        # Pillow signals unknown formats, truncated data and broken codecs with these types.
        raise ImageError(
            path,
            "unreadable_image",
            f"cannot decode image ({type(e).__name__}: {e}); only {', '.join(ALLOWED_FORMATS)} are read: "
            "re-export it as PNG/JPEG or drop the row",
        ) from e


def load_image_array(path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return uint8 array of shape (3, size, size): open_rgb then resize (bilinear) to size x size."""
    if size < 1:
        raise ValueError(f"image size must be >= 1, got {size}")
    img = open_rgb(path, max_pixels=max_pixels)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
