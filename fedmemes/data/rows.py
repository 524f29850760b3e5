"""One row of a meme table checked: the keys, the id, the image path, the label, the text; what `on_error` keeps."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, cast

from fedmemes.data.meme import DataIssue, Meme

# raise: stop on any issue | skip: drop bad rows | keep_text / keep_image: keep a row whose
# other modality is unusable, marked missing in its availability mask (never a zero image).
ON_ERROR = ("raise", "skip", "keep_text", "keep_image")
REQUIRED_KEYS = ("id", "img", "label", "text")
# Problems that make only one modality unusable; everything else makes the row unusable.
TEXT_KINDS = frozenset({"bad_text"})
IMAGE_KINDS = frozenset({"bad_img", "missing_image", "unreadable_image", "image_too_large"})


MAX_JSON_DEPTH = 32  # a meme row is a flat object; deeper nesting is hostile or broken


def too_deep(value: object, limit: int = MAX_JSON_DEPTH) -> bool:
    """Return True if `value` nests lists/dicts deeper than `limit` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def id_key(meme_id: str) -> str:
    """Normalise an id so 42 and "00042" (int in some copies, padded string in others) match."""
    return (meme_id.lstrip("0") or "0") if meme_id.isdigit() else meme_id


def repeated_id(first_line: dict[str, int], meme: Meme, where: str, n: int) -> DataIssue | None:
    """Return a duplicate_id issue if `meme`'s id was seen before; otherwise record line `n` as its first."""
    key = id_key(meme.id)
    if key in first_line:
        detail = f"id {meme.id} already used on line {first_line[key]}; give each meme one row per split"
        return DataIssue(where, n, "duplicate_id", detail)
    first_line[key] = n
    return None


def _meta(row: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Return the row's extra scalar keys (e.g. a 'client' column) as sorted (key, value) pairs."""
    return tuple(
        sorted(
            (k, str(v))
            for k, v in row.items()
            if k not in REQUIRED_KEYS and isinstance(v, (str, int, float)) and not isinstance(v, bool)
        )
    )


def _modality_kinds(problems: list[tuple[str, str]]) -> set[str]:
    """Map each problem to 'text', 'image' or 'row' (a missing 'text'/'img' key hits one modality)."""

    def of(kind: str, detail: str) -> str:
        if kind in TEXT_KINDS or (kind == "missing_key" and detail.startswith("key 'text'")):
            return "text"
        if kind in IMAGE_KINDS or (kind == "missing_key" and detail.startswith("key 'img'")):
            return "image"
        return "row"

    return {of(k, d) for k, d in problems}


def check_row(row: object, root: Path, on_error: str = "raise") -> tuple[list[tuple[str, str]], Meme | None]:
    """Validate one parsed jsonl row; return (kind, detail) problems and the Meme if usable.

    With on_error keep_text (keep_image) a row whose only problems hit the image (the text)
    still yields a Meme, with that modality marked missing.
    """
    if not isinstance(row, dict):
        return [
            (
                "bad_json",
                f"expected a JSON object, got {type(row).__name__}; "
                'write one {"id", "img", "label", "text"} object per line',
            )
        ], None
    problems: list[tuple[str, str]] = []
    for key in REQUIRED_KEYS:
        if key not in row:
            problems.append(("missing_key", f"key '{key}' is missing; every line needs {', '.join(REQUIRED_KEYS)}"))
    meme_id, img, label, text = (row.get(k) for k in REQUIRED_KEYS)
    if "id" in row and (isinstance(meme_id, bool) or not isinstance(meme_id, (int, str)) or str(meme_id).strip() == ""):
        problems.append(("bad_id", f"id must be an integer or a non-empty string, got {meme_id!r}"))
    if "img" in row:
        rel = PurePosixPath(img) if isinstance(img, str) else None
        if rel is None or not str(img).strip() or rel.is_absolute() or ".." in rel.parts:
            problems.append(
                ("bad_img", f"img must be a path relative to the dataset root (like 'img/01235.png'), got {img!r}")
            )
    # bool is an int subclass; true/false in the file is a mistake, not a label.
    if "label" in row and (isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int)):
        problems.append(
            (
                "bad_label",
                f"label must be the integer 0 or 1 (strings, floats and booleans are rejected), got {label!r}",
            )
        )
    if "text" in row and (not isinstance(text, str) or not text.strip()):
        problems.append(("bad_text", f"text must be a non-empty string, got {text!r}"))
    if not problems:  # the checks above passed: img and text are strings, label an int
        return [], Meme(
            id=str(meme_id).strip(),
            img=root / cast(str, img),
            text=cast(str, text),
            label=cast(int, label),
            meta=_meta(row),
        )
    hit = _modality_kinds(problems)
    if on_error == "keep_text" and hit == {"image"}:
        img_path = root / img if isinstance(img, str) and img.strip() else root
        return problems, Meme(
            id=str(meme_id).strip(),
            img=img_path,
            text=cast(str, text),
            label=cast(int, label),
            has_image=False,
            meta=_meta(row),
        )
    if on_error == "keep_image" and hit == {"text"}:
        return problems, Meme(
            id=str(meme_id).strip(),
            img=root / cast(str, img),
            text="",
            label=cast(int, label),
            has_text=False,
            meta=_meta(row),
        )
    return problems, None
