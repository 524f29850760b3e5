"""`fedmemes data ocr SRC`: read the caption in each image of a folder (or of a jsonl in the original layout)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from fedmemes.data.ocr import OcrReader, OcrUnavailable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


def _default_cache() -> Path:
    # The same folder config.yaml's cache_dir names, so a later `dataset.ocr=...` run reuses every read.
    return Path(os.environ.get("FEDMEMES_CACHE") or Path.home() / ".cache" / "fedmemes")


def inputs(src: Path) -> list[dict[str, Any]]:
    """Return one row per image: {img, path} for a folder; the jsonl's id and img (+ path) for a jsonl file."""
    if src.is_dir():
        images = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise ValueError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
        return [{"img": str(p.relative_to(src)), "path": p} for p in images]
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file or folder; pass a folder of images or a .jsonl file")
    rows = []
    for n, line in enumerate(src.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}:{n}: not a JSON object ({e.msg}); write one object per line") from None
        img = row.get("img", row.get("image")) if isinstance(row, dict) else None
        if not isinstance(img, str) or not img:
            raise ValueError(f'{src}:{n}: no "img" key; each line needs {{"img": "img/NAME.png", ...}}')
        path = (src.parent / img) if (src.parent / img).is_file() else src.parent / "img" / img
        if not path.is_file():
            raise FileNotFoundError(f'{src}:{n}: "img": {img} not found (looked in {src.parent} and its img/)')
        rows.append({**({"id": row["id"]} if "id" in row else {}), "img": img, "path": path})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, read every image (cached by content hash) and write or print jsonl rows."""
    p = argparse.ArgumentParser(
        prog="fedmemes data ocr",
        description="Read the caption in each image with Tesseract; print or write jsonl {img, text, text_source}.",
    )
    p.add_argument("src", type=Path, help="a folder of images, or a .jsonl in the original layout (img keys)")
    p.add_argument("--lang", default="eng", help="Tesseract language pack(s), e.g. hin or eng+hin (default eng)")
    p.add_argument("--out", type=Path, help="write jsonl here (default: print to stdout)")
    p.add_argument("--cache-dir", type=Path, default=None, help="default $FEDMEMES_CACHE or ~/.cache/fedmemes")
    p.add_argument("--workers", type=int, default=1, help="images read at once (one tesseract process each)")
    args = p.parse_args(argv)
    try:
        rows = inputs(args.src.expanduser())
        reader = OcrReader(args.cache_dir or _default_cache(), args.lang)
        texts = reader.read_many([r.pop("path") for r in rows], max(1, args.workers))
    except (OcrUnavailable, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    found = [{**r, "text": " ".join(t.split()), "text_source": "ocr"} for r, t in zip(rows, texts, strict=True)]
    lines = "".join(json.dumps(r) + "\n" for r in found)
    if args.out is None:
        sys.stdout.write(lines)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(lines, encoding="utf-8")
    empty = sum(1 for t in texts if not t.strip())
    print(f"{len(rows)} images read, {empty} without text found: {args.out}", file=sys.stderr)
