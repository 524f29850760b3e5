"""Read and validate a Hateful Memes folder in the original layout (img/ + <split>.jsonl)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

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
from fedmemes.data.rows import MAX_JSON_DEPTH, ON_ERROR, check_row, id_key, repeated_id, too_deep

log = logging.getLogger(__name__)


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
