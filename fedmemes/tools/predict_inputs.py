"""Memes to score, read and checked as training reads them: a jsonl, a folder in the original layout, one
--text/--image meme, or a finished run's own hold-out split."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig

from fedmemes.data.images import DEFAULT_MAX_PIXELS
from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import SPLITS, DataError, DataIssue, Meme
from fedmemes.data.rows import MAX_JSON_DEPTH, ON_ERROR, check_row, repeated_id, too_deep


@dataclass
class Inputs:
    """Memes to score, which of them carry a label, and the rows that were reported and skipped."""

    memes: list[Meme]
    labelled: list[bool]
    issues: list[DataIssue]
    split: list[str]


_TOO_DEEP = (
    f"nested deeper than {MAX_JSON_DEPTH} levels or a number too long; "
    'write one flat {"id", "img", "label", "text"} object per line'
)


def parse_line(raw: bytes, n: int, path: Path) -> tuple[object, DataIssue | None]:
    """Decode one jsonl line as training does (fedmemes/data/local_dir.py), one bad byte costing one row."""
    try:
        row = json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n"))
    except UnicodeDecodeError as e:
        return None, DataIssue(
            str(path), n, "bad_json", f"not UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8"
        )
    except json.JSONDecodeError as e:
        return None, DataIssue(str(path), n, "bad_json", f"{e.msg} (column {e.colno}); fix or delete the line")
    except (RecursionError, ValueError):
        # Nesting deeper than the interpreter's stack, or a 5,000-digit number: one bad row, never a crash (or a 500).
        return None, DataIssue(str(path), n, "bad_json", _TOO_DEEP)
    if too_deep(row):
        return None, DataIssue(str(path), n, "bad_json", _TOO_DEEP)
    return row, None


def check_rows(
    rows: Iterator[tuple[int, object]], root: Path, where: str, on_error: str = "skip"
) -> tuple[list[tuple[int, Meme, bool]], list[DataIssue]]:
    """Validate parsed rows with training's checks; `label` may be absent (unlabelled memes). Return (line, meme,
    labelled)."""
    kept: list[tuple[int, Meme, bool]] = []
    issues: list[DataIssue] = []
    first_line: dict[str, int] = {}
    for n, row in rows:
        labelled = not isinstance(row, dict) or "label" in row
        problems, meme = check_row(row if labelled else {**cast(dict[str, Any], row), "label": 0}, root, on_error)
        issues.extend(DataIssue(where, n, k, d) for k, d in problems)
        if meme is None:
            continue
        duplicate = repeated_id(first_line, meme, where, n)
        if duplicate is not None:
            issues.append(duplicate)
            continue
        kept.append((n, meme, labelled))
    return kept, issues


def _image_checked(
    kept: list[tuple[int, Meme, bool]], where: str, on_error: str, max_pixels: int | None = None
) -> tuple[list[tuple[int, Meme, bool]], list[DataIssue]]:
    """Decode-check every image with training's checks; a bad one skips its row (keep_text keeps the caption)."""
    source = LocalDirSource(Path.cwd(), on_error=on_error, max_image_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    bad = source.image_problems({m.img for _, m, _ in kept if m.has_image})
    out, issues = [], []
    for n, meme, labelled in kept:
        err = bad.get(meme.img) if meme.has_image else None
        if err is None:
            out.append((n, meme, labelled))
            continue
        issues.append(DataIssue(where, n, err.kind, f"{meme.img}: {err.detail}"))
        if on_error == "keep_text" and meme.has_text:
            out.append((n, replace(meme, has_image=False), labelled))
    return out, issues


def read_jsonl(path: str | Path, on_error: str = "skip") -> Inputs:
    """Read a jsonl in the original layout (images relative to its folder); bad rows are reported, never scored."""
    path = Path(path).expanduser().absolute()
    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {ON_ERROR}, got {on_error!r}")
    with path.open("rb") as f:
        parsed = [(n, *parse_line(raw, n, path)) for n, raw in enumerate(f, start=1) if raw.strip()]
    kept, issues = check_rows(((n, row) for n, row, err in parsed if err is None), path.parent, str(path), on_error)
    kept, image_issues = _image_checked(kept, str(path), on_error)
    issues = sorted([err for _, _, err in parsed if err is not None] + issues + image_issues, key=lambda i: i.line)
    if issues and on_error == "raise":
        raise DataError(issues)
    return Inputs([m for _, m, _ in kept], [lab for _, _, lab in kept], issues, [path.stem] * len(kept))


def read_input(path: str | Path, on_error: str = "skip") -> Inputs:
    """Read a jsonl, or every split jsonl of a folder in the original layout."""
    path = Path(path).expanduser()
    if path.is_file():
        return read_jsonl(path, on_error)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} not found: INPUT is a jsonl, a folder in the original layout, or use --text/--image"
        )
    files = [path / f"{s}.jsonl" for s in SPLITS if (path / f"{s}.jsonl").is_file()] or sorted(path.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(
            f"{path}: no *.jsonl; expected the Hateful Memes layout: img/NNNNN.png plus e.g. test_seen.jsonl"
        )
    parts = [read_jsonl(f, on_error) for f in files]
    return Inputs(*([x for p in parts for x in getattr(p, k)] for k in ("memes", "labelled", "issues", "split")))


def single(text: str, image: str | Path, meme_id: str | None = None) -> Inputs:
    """One meme from --text and --image, validated like a jsonl row."""
    image = Path(image).expanduser().absolute()
    row = {"id": meme_id or image.stem, "img": image.name, "text": text}
    kept, issues = check_rows(iter([(1, row)]), image.parent, "--text/--image", "skip")
    kept, image_issues = _image_checked(kept, str(image), "skip")
    return Inputs([m for _, m, _ in kept], [False] * len(kept), issues + image_issues, ["input"] * len(kept))


def run_split(cfg: DictConfig, which: str) -> Inputs:
    """The run's own hold-out split (test or dev), exactly as the server held it (same files or the same carve of
    train)."""
    from fedmemes.federation.node_datasets import holdout

    split = holdout(cfg)
    memes = {"test": split.test, "dev": split.val}[which]
    return Inputs(list(memes), [True] * len(memes), [], [which] * len(memes))
