"""Re-draw a meme folder's train/dev/test split (stratified, seeded) and stress its captions with seeded noise.

Both work on a folder in its original layout (`LAYOUTS`) and write one in the same layout that the
dataset's own loader reads: the image folder is a symlink to the source's (images are never
copied), and each line is copied verbatim, only its split changes. A line that is not valid JSON
(or has no readable label) is drawn like the others, in a stratum of its own, so the loader still
reports it; the re-split never judges rows. Pure Python: no Flower, no Hydra.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps its split files (split name -> path under the root) and its images."""

    files: dict[str, str]
    images: str
    label: str  # the key holding the label: "label" (0/1) or "labels" (HarMeme: harm level first)


LAYOUTS = {
    "harmeme": Layout(
        {"train": "annotations/train.jsonl", "val": "annotations/val.jsonl", "test": "annotations/test.jsonl"},
        "images",
        "labels",
    ),
    # dev_unseen/test_unseen share ids with the seen files: left out so no meme is drawn twice.
    "hateful_memes": Layout(
        {"train": "train.jsonl", "dev_seen": "dev_seen.jsonl", "test_seen": "test_seen.jsonl"}, "img", "label"
    ),
}
VOWELS = frozenset("aeiouAEIOU")


def layout_of(name: str) -> Layout:
    """Return the layout called `name`, or raise naming the allowed ones."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; allowed: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def label_of(line: str, layout: Layout) -> int | None:
    """Return a line's binary label (HarMeme: harmful = labels[0] != "not harmful"), or None if unreadable."""
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):
        return None
    value = row.get(layout.label) if isinstance(row, dict) else None
    if layout.label == "labels":
        if isinstance(value, list) and value and isinstance(value[0], str):
            return int(value[0].strip().lower() != "not harmful")
        return None
    # The loader's own rule: the integers 0 and 1 only (1.0 and true are bad labels there).
    return value if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1) else None


def _text(path: Path) -> str:
    """Return a file's text; bytes that are not UTF-8 survive the round trip (the loader reports them)."""
    return path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def read_splits(root: str | Path, layout: str) -> dict[str, list[str]]:
    """Return the non-blank lines of every split file present, verbatim (without their newline), by split."""
    spec, root = layout_of(layout), Path(root)
    if not (root / spec.files["train"]).is_file():
        raise FileNotFoundError(f"{root / spec.files['train']} not found; is {root} a folder in the {layout} layout?")
    # split("\n") as the loader reads (splitlines would also cut at U+2028 inside a caption); a leading BOM
    # belongs to the file, not to its first line (which may land mid-file in another split).
    return {
        split: [ln for ln in _text(root / rel).split("\n") if ln.strip()]
        for split, rel in spec.files.items()
        if (root / rel).is_file()
    }


def _allocate(total: int, wanted: list[float], caps: list[int]) -> list[int]:
    """Split `total` items into integers near `wanted` (largest remainder first), none above its cap."""
    out = [min(int(w), c) for w, c in zip(wanted, caps, strict=True)]
    order = sorted(range(len(wanted)), key=lambda i: out[i] - wanted[i])  # furthest below its share first
    while sum(out) < total:  # sum(caps) >= total, so each pass places at least one item
        for i in order:
            if sum(out) < total and out[i] < caps[i]:
                out[i] += 1
    return out


def _stats(splits: dict[str, list[str]], layout: Layout) -> dict[str, dict[str, Any]]:
    stats = {}
    for split, lines in splits.items():
        labels = [label_of(ln, layout) for ln in lines]
        known = [x for x in labels if x is not None]
        rate = sum(known) / len(known) if known else float("nan")
        stats[split] = {"n": len(lines), "positive_rate": rate, "unreadable": len(lines) - len(known)}
    return stats


def _write(splits: dict[str, list[str]], src_root: Path, dest_root: Path, layout: Layout) -> None:
    """Write the split files under dest_root and link its image folder to the source's."""
    if dest_root.resolve() == src_root.resolve():
        raise ValueError(f"{dest_root}: the destination is the source folder; give a new folder")
    dest_root.mkdir(parents=True, exist_ok=True)
    link = dest_root / layout.images
    if link.is_symlink():
        link.unlink()  # a previous re-split's link: replaced, its target untouched
    elif link.exists():
        raise FileExistsError(f"{link} is a real folder; resplit writes into a new folder (it never copies images)")
    link.symlink_to((src_root / layout.images).resolve(), target_is_directory=True)
    for split, rel in layout.files.items():
        path = dest_root / rel
        path.unlink(missing_ok=True)  # an old file of a split the source lacks would be read as data
        if split in splits:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(ln + "\n" for ln in splits[split])
            path.write_bytes(text.encode("utf-8", "surrogateescape"))


def resplit(src_root: str | Path, dest_root: str | Path, layout: str, seed: int | None) -> dict[str, dict[str, Any]]:
    """Pool the splits of `src_root`, re-draw them stratified by label with the same sizes, write them to dest_root.

    `seed=None` keeps the source's splits (a linked copy, e.g. for `noisy_captions`). Returns per split
    its size `n`, `positive_rate` (over readable labels) and the count of `unreadable` lines.
    """
    spec, src, dest = layout_of(layout), Path(src_root), Path(dest_root)
    source = read_splits(src, layout)
    if seed is not None:
        names = list(source)
        sizes = [len(source[s]) for s in names]
        pool = [ln for s in names for ln in source[s]]
        strata: dict[int | None, list[int]] = {1: [], None: [], 0: []}  # positives first, the rest fill up
        for i, ln in enumerate(pool):
            strata[label_of(ln, spec)].append(i)
        rng = random.Random(seed)
        picked: dict[str, list[int]] = {s: [] for s in names}
        room = list(sizes)
        for members in strata.values():
            rng.shuffle(members)
            counts = _allocate(len(members), [n * len(members) / len(pool) for n in sizes], room)
            start = 0
            for k, (split, count) in enumerate(zip(names, counts, strict=True)):
                picked[split] += members[start : start + count]
                start, room[k] = start + count, room[k] - count
        # Within a split, lines keep the source's order: diffs stay readable, the partition reshuffles anyway.
        source = {s: [pool[i] for i in sorted(picked[s])] for s in names}
    _write(source, src, dest, spec)
    return _stats(source, spec)


def noise_caption(text: str, rate: float, rng: random.Random) -> str:
    """Return `text` with romanised-spelling noise: words dropped at rate/2, characters altered at `rate`."""
    words = text.split()
    kept = [w for w in words if rng.random() >= rate / 2] or words[:1]  # never an empty caption: the loader drops it
    # Substitutes come from the caption's own letters, so a Devanagari caption stays Devanagari.
    letters = [c for c in text if c.isalpha()] or list(string.ascii_lowercase)
    out = []
    for word in kept:
        chars, i, noisy = list(word), 0, []
        while i < len(chars):
            c = chars[i]
            if rng.random() >= rate:
                noisy.append(c)
            elif c in VOWELS and i > 0 and rng.random() < 0.5:
                pass  # a dropped vowel, as romanised Hindi/Urdu spells "bakwaas" as "bkwas"
            else:
                op = rng.randrange(4)
                if op == 0:
                    noisy.append(rng.choice(letters))
                elif op == 2:
                    noisy += [c, c]
                elif op == 3 and i + 1 < len(chars):
                    noisy += [chars[i + 1], c]
                    i += 1
                # op 1 (and a swap at the word's end): the character is deleted
            i += 1
        out.append("".join(noisy) or word[:1])
    return " ".join(out)


def noisy_captions(root: str | Path, layout: str, rate: float, seed: int) -> int:
    """Rewrite every caption of every split under `root` with `noise_caption`; return how many changed.

    Deterministic per (seed, meme id). Lines that are not JSON objects with a string `text` stay verbatim.
    Rewrites in place: run it on a `resplit` output, never on the source folder.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"caption noise rate must be in [0, 1], got {rate}")
    spec, root = layout_of(layout), Path(root)
    if not (root / spec.images).is_symlink():
        raise ValueError(f"{root}: not a resplit() folder (its {spec.images}/ is no link); noise only copies")
    changed = 0
    for split, lines in read_splits(root, layout).items():
        path = root / spec.files[split]
        out = []
        for ln in lines:
            try:
                row = json.loads(ln)
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                out.append(ln)
                continue
            rng = random.Random(f"{seed}|{row.get('id', row['text'])}")
            noisy = noise_caption(row["text"], rate, rng)
            changed += noisy != row["text"]
            out.append(json.dumps({**row, "text": noisy}, ensure_ascii=False))
        path.unlink()  # a fresh file: never write through a link into the source
        path.write_bytes("".join(ln + "\n" for ln in out).encode("utf-8", "surrogateescape"))
    return changed
