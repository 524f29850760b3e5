"""Tests for fedmemes.data.images: messy formats, modes, truncation and pixel bombs."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedmemes.data.images import ImageError, load_image_array, open_rgb


def _save(img: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    """Write img in fmt to path whatever its extension."""
    img.save(path, format=fmt, **kw)
    return path


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """Write a PNG whose header claims width x height but whose pixel data is garbage."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"garbage") + chunk(b"IEND", b""))
    return path


def _red(size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (220, 30, 30))


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "GIF", "BMP"])
def test_format_behind_png_name_is_read(tmp_path: Path, fmt: str) -> None:
    path = _save(_red(), tmp_path / "x.png", fmt)
    arr = load_image_array(path, 16)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8
    r, g, b = arr.reshape(3, -1).mean(axis=1)
    assert r > 180 and g < 80 and b < 80  # still red after the lossy codecs


def test_rgba_composites_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 10, 20))  # left half opaque blue, right half transparent
    arr = load_image_array(_save(img, tmp_path / "a.png", "PNG"), 20)
    assert arr[:, 10, 2].tolist() == [0, 0, 255]
    assert arr[:, 10, 17].tolist() == [255, 255, 255]


def test_palette_with_transparency_composites_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (20, 20), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.paste(1, (0, 0, 10, 20))
    img.info["transparency"] = 0  # index 0 (black) is transparent
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    arr = load_image_array(path, 20)
    assert arr[:, 10, 2].tolist() == [0, 200, 0]
    assert arr[:, 10, 17].tolist() == [255, 255, 255]


@pytest.mark.parametrize(
    "mode,fmt,color",
    [
        ("L", "PNG", 128),
        ("LA", "PNG", (128, 255)),
        ("1", "PNG", 1),
        ("CMYK", "JPEG", (0, 255, 255, 0)),
        ("I;16", "PNG", 40000),
    ],
)
def test_other_modes_become_rgb(tmp_path: Path, mode: str, fmt: str, color: object) -> None:
    path = _save(Image.new(mode, (12, 12), color), tmp_path / "m.png", fmt)
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (12, 12)
    arr = load_image_array(path, 8)
    assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8
    if mode == "CMYK":  # no cyan, full magenta and yellow: red
        assert arr[0].mean() > 200 and arr[1].mean() < 60
    elif mode == "I;16":  # 40000 / 65535 of full scale, not clipped to white
        assert 140 < arr.mean() < 170
    elif mode != "1":
        assert abs(arr.mean() - 128) < 2


def test_resize_and_channel_order(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 32), (10, 20, 30))
    arr = load_image_array(_save(img, tmp_path / "r.png", "PNG"), 24)
    assert arr.shape == (3, 24, 24)
    assert arr[:, 5, 5].tolist() == [10, 20, 30]


def test_truncated_file_is_image_error(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.png") as e:
        open_rgb(path)
    assert e.value.kind == "unreadable_image"


def test_non_image_bytes_is_image_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(ImageError, match="notes.png") as e:
        load_image_array(path, 8)
    assert e.value.kind == "unreadable_image"


def test_missing_file_is_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="gone.png") as e:
        open_rgb(tmp_path / "gone.png")
    assert e.value.kind == "missing_image"


def test_pixel_bomb_rejected_before_decoding(tmp_path: Path) -> None:
    # The pixel data is garbage: decoding would fail as unreadable, so "too large" proves the
    # size check ran first.
    path = _png_header_only(tmp_path / "bomb.png", 5000, 5000)
    with pytest.raises(ImageError, match="bomb.png") as e:
        open_rgb(path, max_pixels=1_000_000)
    assert e.value.kind == "image_too_large"
    assert "25,000,000" in str(e.value)
    with pytest.raises(ImageError) as e:
        open_rgb(path, max_pixels=100_000_000)
    assert e.value.kind == "unreadable_image"


def test_huge_bomb_caught_by_pillow_guard_reported_as_too_large(tmp_path: Path) -> None:
    path = _png_header_only(tmp_path / "huge.png", 100_000, 100_000)
    with pytest.raises(ImageError, match="huge.png") as e:
        open_rgb(path, max_pixels=10**12)
    assert e.value.kind == "image_too_large"


def test_real_size_image_over_limit(tmp_path: Path) -> None:
    path = _save(Image.new("L", (2000, 1000)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageError, match="big.png"):
        load_image_array(path, 8, max_pixels=1_000_000)
    assert load_image_array(path, 8, max_pixels=2_000_000).shape == (3, 8, 8)


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO", "TGA", "EPS"])
def test_format_outside_the_allow_list_is_unreadable(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "x.png"
    if fmt == "EPS":  # Pillow writes EPS only with Ghostscript; a minimal header is enough to be recognised
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    else:
        _save(_red(), path, fmt)
        with Image.open(path) as probe:  # Pillow itself reads it: only our allow-list refuses it
            assert probe.format == fmt
    with pytest.raises(ImageError) as err:
        open_rgb(path)
    assert err.value.kind == "unreadable_image" and "PNG, JPEG, GIF, WEBP, BMP" in err.value.detail
