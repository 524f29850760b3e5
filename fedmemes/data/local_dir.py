"""Read and validate a Hateful Memes folder in the original layout (img/ + <split>.jsonl)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, cast

from tqdm import tqdm

from fedmemes.data.images import DEFAULT_MAX_PIXELS, ImageError, open_rgb
from fedmemes.data.meme import (
    HOLDOUT_SPLITS,
    SPLITS,
    DataError,
    DataIssue,
    Meme,
    count_kinds,
)

log = logging.getLogger(__name__)

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


class LocalDirSource:
    """A folder in the original Hateful Memes layout: img/NNNNN.png + <split>.jsonl files."""

    def __init__(
        self,
        root: str | Path,
        on_error: str = "raise",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        check_images: bool = True,
        splits: Sequence[str] | None = None,
    ) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        unknown = [s for s in (splits or ()) if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown split(s) {unknown}; allowed: {SPLITS}")
        self.root = Path(root).expanduser().absolute()
        self.on_error = on_error
        self.max_image_pixels = max_image_pixels
        self.check_images = check_images
        self.splits = tuple(splits) if splits is not None else None
        self.issues: list[DataIssue] = []

    def _split_files(self) -> dict[str, Path]:
        """Return the jsonl file of every split to read; raise if train (or a requested one) is absent."""
        if not self.root.is_dir():  # the folder itself first: a mistyped dataset.root is the likeliest mistake
            raise FileNotFoundError(
                f"no folder at {self.root} (dataset.root): point it at a folder in the Hateful Memes layout "
                "(img/ + train.jsonl)"
            )
        wanted = self.splits or SPLITS
        files = {s: self.root / f"{s}.jsonl" for s in wanted}
        missing = [p.name for s, p in files.items() if not p.is_file() and (s == "train" or self.splits is not None)]
        if missing or "train" not in files:
            raise FileNotFoundError(
                f"{self.root}: missing {', '.join(missing) or 'train.jsonl'}; expected the Hateful "
                f"Memes layout: img/NNNNN.png plus train.jsonl and any of "
                f"{', '.join(s + '.jsonl' for s in HOLDOUT_SPLITS)}"
            )
        found = {s: p for s, p in files.items() if p.is_file()}
        # The first release (2020) named the labelled dev set dev.jsonl (later dev_seen.jsonl);
        # its test.jsonl has no labels, so it can't be scored (test is then carved from train).
        first_release = self.root / "dev.jsonl"
        if "dev_seen" in wanted and "dev_seen" not in found and first_release.is_file():
            log.info("%s: no dev_seen.jsonl; reading dev.jsonl (the first release's name) as dev_seen", self.root)
            found["dev_seen"] = first_release
        return found

    def _check(self, row: object) -> tuple[list[tuple[str, str]], Meme | None]:
        """Validate one parsed row (a source in another layout maps its rows to this one first)."""
        return check_row(row, self.root, self.on_error)

    def _read_jsonl(self, path: Path, issues: list[DataIssue]) -> list[tuple[int, Meme]]:
        """Parse one split file; record row-level issues; return (line, Meme) for clean rows."""
        rows: list[tuple[int, Meme]] = []
        first_line: dict[str, int] = {}
        with path.open("rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    # Decode per line so one bad byte costs one row; -sig drops a leading BOM.
                    row = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n"))
                except UnicodeDecodeError as e:
                    issues.append(
                        DataIssue(
                            str(path),
                            n,
                            "bad_json",
                            f"not UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8",
                        )
                    )
                    continue
                except json.JSONDecodeError as e:
                    issues.append(
                        DataIssue(str(path), n, "bad_json", f"{e.msg} (column {e.colno}); fix or delete the line")
                    )
                    continue
                except (RecursionError, ValueError) as e:
                    # Pathological lines (nesting deeper than Python's stack, 5000-digit numbers) cost one row, not the
                    # load.
                    detail = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
                    issues.append(DataIssue(str(path), n, "bad_json", f"{detail}; fix or delete the line"))
                    continue
                if too_deep(row):
                    issues.append(
                        DataIssue(
                            str(path),
                            n,
                            "bad_json",
                            f"nested deeper than {MAX_JSON_DEPTH} levels; "
                            'write one flat {"id", "img", "label", "text"} object per line',
                        )
                    )
                    continue
                problems, meme = self._check(row)
                issues.extend(DataIssue(str(path), n, k, d) for k, d in problems)
                if meme is None:
                    continue
                duplicate = repeated_id(first_line, meme, str(path), n)
                if duplicate is not None:
                    issues.append(duplicate)
                    continue
                rows.append((n, meme))
        return rows

    def image_problems(self, paths: set[Path]) -> dict[Path, ImageError]:
        """Check every distinct image once; return the failures by path."""
        if not self.check_images:
            # Without decoding, still catch missing files: a stat is cheap and they are common.
            return {
                p: ImageError(p, "missing_image", "file not found; check the 'img' path")
                for p in paths
                if not p.is_file()
            }

        def check(p: Path) -> ImageError | None:
            try:
                open_rgb(p, self.max_image_pixels)
            except ImageError as e:
                return e
            return None

        # Pillow decodes without the GIL, so threads speed up checking thousands of files.
        workers = min(8, (os.cpu_count() or 1) + 1)
        ordered = sorted(paths)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # disable=None: a progress bar on a terminal, silent in logs and under Ray.
            checked = tqdm(
                pool.map(check, ordered),
                total=len(ordered),
                desc=f"checking {len(ordered)} images",
                unit="image",
                disable=None,
                leave=False,
            )
            results = dict(zip(ordered, checked, strict=True))
        return {p: e for p, e in results.items() if e is not None}

    def _read_splits(self) -> tuple[dict[str, Path], dict[str, list[tuple[int, Meme]]], list[DataIssue]]:
        """Return each split's file, its checked (line, Meme) rows and the row issues (other layouts override this)."""
        files = self._split_files()
        issues: list[DataIssue] = []
        return files, {s: self._read_jsonl(p, issues) for s, p in files.items()}, issues

    def load(self) -> dict[str, list[Meme]]:
        """Read, validate and return the memes of every split present, by split name."""
        files, rows, issues = self._read_splits()

        bad_images = self.image_problems({m.img for r in rows.values() for _, m in r if m.has_image})
        for split, split_rows in rows.items():
            kept = []
            for n, meme in split_rows:
                err = bad_images.get(meme.img) if meme.has_image else None
                if err is None:
                    kept.append((n, meme))
                    continue
                issues.append(DataIssue(str(files[split]), n, err.kind, f"{meme.img}: {err.detail}"))
                if self.on_error == "keep_text" and meme.has_text:
                    kept.append((n, replace(meme, has_image=False)))  # the mask says so: no zero image
            rows[split] = kept

        # A training meme that is also in a hold-out split leaks the answer into evaluation.
        holdout = {id_key(m.id): s for s in HOLDOUT_SPLITS if s in rows for _, m in rows[s]}
        if "train" in rows:
            kept = []
            for n, meme in rows["train"]:
                other = holdout.get(id_key(meme.id))
                if other is None:
                    kept.append((n, meme))
                else:
                    issues.append(
                        DataIssue(
                            str(files["train"]),
                            n,
                            "holdout_overlap",
                            f"id {meme.id} is also in {other} ({files[other].name}); a training row seen at "
                            f"evaluation inflates scores, so delete it from {files['train'].name}",
                        )
                    )
            rows["train"] = kept

        order = {str(p): n for n, p in enumerate(dict.fromkeys(files.values()))}  # splits may share one table
        issues.sort(key=lambda i: (order.get(i.file, len(order)), i.line))
        self.issues = issues
        if issues and self.on_error == "raise":
            raise DataError(issues)
        if issues:
            partial = sum(not (m.has_text and m.has_image) for r in rows.values() for _, m in r)
            log.warning(
                "%s: %d data issue(s) (on_error=%s): %s; %d row(s) kept with a modality marked missing; first: %s",
                self.root,
                len(issues),
                self.on_error,
                count_kinds(issues),
                partial,
                issues[0],
            )
        if not rows["train"]:
            raise DataError(
                issues,
                fix=f"no usable row left in {files['train']}; fix the file or point dataset.root at another copy",
            )
        return {s: [m for _, m in r] for s, r in rows.items()}
