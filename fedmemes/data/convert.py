"""Write any source's memes in the original Hateful Memes layout, so every other tool reads them as they are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fedmemes.bookkeeping.private_files import private_open
from fedmemes.data.meme import Meme
from fedmemes.data.table import image_suffix


def write_original_layout(splits: dict[str, list[Meme]], out: Path) -> dict[str, int]:
    """Write img/ and one <split>.jsonl per split (id, img, label, text, text_source if not given + extra keys) into the
    empty folder `out`.

    Only whole memes are written (a meme kept with a part marked missing has no image or caption to
    write); returns the rows written per split.
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not empty; give the converted copy a new folder")
    (out / "img").mkdir(parents=True)
    written: dict[str, int] = {}
    for split, memes in splits.items():
        whole = [m for m in memes if m.has_text and m.has_image]
        with private_open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for meme in whole:
                data = meme.img.read_bytes()
                # Named by content: two rows with one picture share a file, two pictures never clash.
                name = f"img/{hashlib.sha256(data).hexdigest()[:20]}{image_suffix(data)}"
                if not (out / name).is_file():
                    with private_open(out / name, "wb") as img:
                        img.write(data)
                row = {"id": meme.id, "img": name, "label": meme.label, "text": meme.text, **dict(meme.meta)}
                if meme.text_source != "given":  # an OCR caption stays marked in the copy
                    row["text_source"] = meme.text_source
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[split] = len(whole)
    return written
