"""`dataset=table`: memes as members keep them (CSV, TSV, JSONL, Parquet, imagefolder, save_to_disk).

Each row is mapped to the original Hateful Memes row (id, img, label, text) through a column map
(guessed from common names when not given) and a label map, then checked by `LocalDirSource`'s
own rules: the same issues, `on_error` policy, image checks and hold-out overlap. Image bytes
(Parquet binary columns, datasets' Image feature) are written once to a content-addressed folder
under the cache dir, never into the member's data folder, so every meme stays a file path.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from fedmemes.bookkeeping.private_files import private_open
from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import DataIssue, Meme
from fedmemes.data.rows import check_row, repeated_id
from fedmemes.data.table_files import Table, find_tables, read_table, split_name

log = logging.getLogger(__name__)

ROLES = ("id", "text", "image", "label", "split")
# Column names tried, in order, for a role the user did not map (compared case-insensitively).
GUESSES = {
    "id": ("id", "idx", "meme_id", "image_id", "uid"),
    "text": ("text", "caption", "ocr", "ocr_text", "sentence", "transcription"),
    "image": ("img", "image", "image_path", "img_path", "file_name", "filename", "path", "image_file"),
    "label": ("label", "labels", "hateful", "is_hateful", "class", "target"),
    "split": ("split", "subset", "set"),
}
# Label spellings read without a dataset.label_map (lower-cased, trimmed; booleans as true/false).
DEFAULT_LABELS = {
    **{k: 1 for k in ("1", "hateful", "hate", "true", "yes")},
    **{k: 0 for k in ("0", "not_hateful", "not-hateful", "not hateful", "non_hateful", "non-hateful")},
    **{k: 0 for k in ("false", "no")},
}
# Magic bytes -> suffix for cached image bytes (the reader trusts the bytes, not the name).
MAGIC = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def label_key(value: object) -> str:
    """Normalise a label cell: True -> 'true', 1.0 -> '1', ' Hateful ' -> 'hateful'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().lower()


def image_suffix(data: bytes) -> str:
    """Guess a file suffix from the first bytes; '.bin' when unknown (the image check then reports it)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in MAGIC if data.startswith(magic)), ".bin")


class TableSource(LocalDirSource):
    """Memes in a table file or folder, read with `datasets`; every row validated like the original layout."""

    def __init__(
        self,
        root: str | Path | None = None,
        files: Mapping[str, str | None] | None = None,
        columns: Mapping[str, str | None] | None = None,
        label_map: Mapping[Any, int] | None = None,
        cache_dir: str | Path = "~/.cache/fedmemes",
        on_error: str = "raise",
        **kwargs: Any,
    ) -> None:
        super().__init__(root if root is not None else ".", on_error=on_error, **kwargs)
        self.table_root = self.root if root is not None else None
        self.files = {k: v for k, v in (files or {}).items() if v}
        self.columns = {k: v for k, v in (columns or {}).items() if v}
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ValueError(f"dataset.columns: unknown role(s) {unknown}; map any of {list(ROLES)} to a column")
        self.label_map = {label_key(k): int(v) for k, v in (label_map or DEFAULT_LABELS).items()}
        bad = {k: v for k, v in self.label_map.items() if v not in (0, 1)}
        if bad:
            raise ValueError(f"dataset.label_map must map labels to 0 (not hateful) or 1 (hateful), got {bad}")
        self.image_cache = Path(cache_dir).expanduser().absolute() / "table_images"

    def _pick_columns(self, names: list[str], table: Table) -> dict[str, str | None]:
        """Map each role to a column: the user's choice, else the first common name present; log the choice."""
        lower = {n.lower(): n for n in names}
        picked: dict[str, str | None] = {}
        for role in ROLES:
            if role in self.columns:
                if self.columns[role] not in names:
                    raise ValueError(
                        f"{table.file}: dataset.columns.{role}={self.columns[role]!r} is not a column; "
                        f"the columns are {names}"
                    )
                picked[role] = self.columns[role]
            else:
                picked[role] = next((lower[g] for g in GUESSES[role] if g in lower), None)
        for role in ("image", "label"):
            if picked[role] is None:
                raise ValueError(
                    f"{table.file}: no {role} column among {names}; name it with dataset.columns.{role}=COLUMN"
                )
        chosen = ", ".join(f"{r}={c}" for r, c in picked.items() if c)
        log.info("%s: reading columns %s (set dataset.columns.ROLE=COLUMN to change)", table.file, chosen)
        return picked

    def _image(self, value: object, base: Path) -> tuple[Path, object]:
        """Return (root, relative img) for check_row: a path as given, or cached bytes."""
        if isinstance(value, dict):  # datasets' Image feature undecoded: {"bytes": ..., "path": ...}
            data, path = value.get("bytes"), value.get("path")
            if data:
                return self._cache_bytes(data)
            if isinstance(path, str) and Path(path).is_absolute():  # datasets resolved it inside the folder
                return Path(path).parent, Path(path).name
            value = path
        if isinstance(value, (bytes, bytearray)):
            return self._cache_bytes(bytes(value))
        if isinstance(value, str):
            value = PurePosixPath(value.replace("\\", "/")).as_posix() if value.strip() else value
        return base, value

    def _cache_bytes(self, data: bytes) -> tuple[Path, str]:
        # Content-addressed: the same picture is written once, whichever row or process meets it first.
        name = hashlib.sha256(data).hexdigest() + image_suffix(data)
        target = self.image_cache / name
        if not target.is_file():
            self.image_cache.mkdir(parents=True, exist_ok=True)
            with private_open(target, "wb") as f:
                f.write(data)
        return self.image_cache, name

    def _map_row(
        self, raw: dict[str, Any], cols: dict[str, str | None], table: Table, n: int, names: list[str] | None = None
    ) -> tuple[list[tuple[str, str]], Meme | None]:
        """Map one table row to the original layout's row, then validate it with check_row."""
        used = {c for c in cols.values() if c}
        row: dict[str, Any] = {k: v for k, v in raw.items() if k not in used and v is not None}  # extra keys: meta
        row["id"] = raw[cols["id"]] if cols["id"] else f"{table.file.stem}-{n}"
        if cols["text"] and raw[cols["text"]] is not None:
            row["text"] = raw[cols["text"]]
        root, row["img"] = self._image(raw[cast_str(cols["image"])], table.base)
        value = raw[cast_str(cols["label"])]
        if isinstance(value, int) and not isinstance(value, bool) and names:  # a ClassLabel: its name is the label
            value = names[value] if 0 <= value < len(names) else value
        label = self.label_map.get(label_key(value)) if value is not None else None
        if label is None:
            row["label"] = 0  # the row is dropped for its label; still report its other problems
            other, _ = check_row(row, root, self.on_error)
            allowed = ", ".join(sorted(self.label_map))
            detail = f"label {value!r} is not one of {allowed}; map it with dataset.label_map='{{{value}: 1}}'"
            return [("bad_label", detail), *other], None
        row["label"] = label
        return check_row(row, root, self.on_error)

    def _read_splits(self) -> tuple[dict[str, Path], dict[str, list[tuple[int, Meme]]], list[DataIssue]]:
        """Read every table; a split column, the table's own split, or train (carved later) decides each row's."""
        tables = find_tables(self.table_root, self.files)
        # train must be present (LocalDirSource names its file when no usable row is left)
        files = {"train": next((t.file for t in tables if t.split in ("train", None)), tables[0].file)}
        rows: dict[str, list[tuple[int, Meme]]] = {"train": []}
        issues: list[DataIssue] = []
        seen: dict[str, dict[str, int]] = {}  # per split: id -> first row, for duplicate ids
        for table in tables:
            # A CSV/TSV row's line is one more than its row (the header); other formats count rows.
            offset = 1 if table.kind == "csv" else 0
            for table_split, ds in read_table(table):
                cols = self._pick_columns(list(ds.column_names), table)
                # imagefolder's labels from sub-folder names (and save_to_disk's ClassLabels) arrive as indices
                names = getattr(ds.features[cast_str(cols["label"])], "names", None)
                for i, raw in enumerate(ds, start=1):
                    n, where = i + offset, str(table.file)
                    split = table_split or "train"
                    if cols["split"] and raw[cols["split"]] is not None and table_split is None:
                        split = split_name(raw[cols["split"]]) or ""
                        if not split:
                            detail = f"split {raw[cols['split']]!r} is not train, dev/val/validation or test"
                            issues.append(DataIssue(where, n, "bad_split", detail))
                            continue
                    problems, meme = self._map_row(raw, cols, table, n, names)
                    issues.extend(DataIssue(where, n, k, d) for k, d in problems)
                    if meme is None:
                        continue
                    duplicate = repeated_id(seen.setdefault(split, {}), meme, where, n)
                    if duplicate is not None:
                        issues.append(duplicate)
                        continue
                    files.setdefault(split, table.file)
                    rows.setdefault(split, []).append((n, meme))
        return files, rows, issues


def cast_str(column: str | None) -> str:
    """Return a column picked for a required role (image, label): _pick_columns never leaves those None."""
    assert column is not None
    return column
