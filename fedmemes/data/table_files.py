"""Find the table files of `dataset=table` and read them with the `datasets` library, offline.

A root is a CSV / TSV / JSONL / Parquet file, a folder holding `metadata.csv` / `metadata.jsonl`
(an `imagefolder`, read as a table whose `file_name` column is the image), a folder with one such
folder or one table file per split (`train/`, `dev.csv`, ...), a `save_to_disk` folder, or an
`imagefolder` without metadata (labels from sub-folder names, read by datasets' own builder).
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

# file suffix -> datasets' packaged builder (all local: no hub lookup)
BUILDERS = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
# split names as people write them -> ours (the server holds dev_seen and test_seen)
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "dev": "dev_seen",
    "val": "dev_seen",
    "valid": "dev_seen",
    "validation": "dev_seen",
    "dev_seen": "dev_seen",
    "dev_unseen": "dev_unseen",
    "test": "test_seen",
    "test_seen": "test_seen",
    "test_unseen": "test_unseen",
}
METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


@dataclass(frozen=True)
class Table:
    """One thing to read: issues name `file`; relative image paths resolve against `base`."""

    file: Path
    base: Path
    split: str | None  # every row's split; None: a split column (or carving) decides
    kind: str  # csv | json | parquet | disk | imagefolder


def split_name(value: object) -> str | None:
    """Map a split value or a file/folder name (train, val, validation, test, ...) to ours; None if unknown."""
    return SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None


def _file_table(path: Path, split: str | None) -> Table:
    kind = BUILDERS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: cannot read a {path.suffix or 'suffix-less'} file; use one of {sorted(BUILDERS)}")
    return Table(path, path.parent, split, kind)


def _in_folder(folder: Path, split: str | None) -> Table | None:
    """The metadata file of an imagefolder-style folder, if it has one."""
    meta = next((folder / m for m in METADATA if (folder / m).is_file()), None)
    return _file_table(meta, split) if meta else None


def find_tables(root: Path | None, files: Mapping[str, str | Path] | None = None) -> list[Table]:
    """Return what to read for `root` (a file or folder) or `files` ({split: file}, relative to root)."""
    if files:
        tables = []
        for key, name in files.items():
            split = split_name(key)
            if split is None:
                raise ValueError(f"dataset.files.{key}: unknown split; use train, dev (or val) and test")
            path = Path(name).expanduser()
            path = path if path.is_absolute() or root is None else root / path
            if not path.exists():
                raise FileNotFoundError(f"dataset.files.{key}: {path} not found")
            table = _in_folder(path, split) if path.is_dir() else _file_table(path, split)
            if table is None:
                raise FileNotFoundError(f"dataset.files.{key}: {path} is a folder without {' or '.join(METADATA)}")
            tables.append(table)
        return tables
    if root is None:
        raise ValueError("dataset=table needs dataset.root=FILE_OR_FOLDER or dataset.files.train=FILE")
    if not root.exists():
        raise FileNotFoundError(f"dataset.root={root} not found; point it at a CSV/TSV/JSONL/Parquet file or a folder")
    if root.is_file():
        return [_file_table(root, None)]
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return [Table(root, root, None, "disk")]
    top = _in_folder(root, None)
    if top is not None:
        return [top]
    per_split = []  # train/ dev/ test/ sub-folders with metadata, or train.csv dev.csv test.csv
    for child in sorted(root.iterdir()):
        split = split_name(child.stem if child.is_file() else child.name)
        if split is None:
            continue
        table = _in_folder(child, split) if child.is_dir() else None
        if child.is_file() and child.suffix.lower() in BUILDERS:
            table = _file_table(child, split)
        if table is not None:
            per_split.append(table)
    if per_split:
        return per_split
    found = [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in BUILDERS]
    if len(found) == 1:
        return [_file_table(found[0], None)]
    if found:
        names = ", ".join(p.name for p in found)
        raise ValueError(f"{root}: several tables ({names}); name them: dataset.files.train=... dataset.files.test=...")
    return [Table(root, root, None, "imagefolder")]  # images in label-named sub-folders


def _load(kind: str, table: Table, cache: str) -> Any:
    if kind == "disk":
        return datasets.load_from_disk(str(table.file), keep_in_memory=True)
    if kind == "imagefolder":
        return datasets.load_dataset("imagefolder", data_dir=str(table.file), cache_dir=cache, keep_in_memory=True)
    kwargs: dict[str, Any] = {}
    if kind == "csv":
        delimiter = "\t" if table.file.suffix.lower() == ".tsv" else ","
        with table.file.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter=delimiter), [])
        # Every cell as text: "00042" stays an id, not 42; labels are mapped from their text.
        features = datasets.Features({name: datasets.Value("string") for name in header})
        kwargs = {"delimiter": delimiter, "features": features, "encoding": "utf-8-sig"}
    return datasets.load_dataset(
        kind, data_files=str(table.file), split="train", cache_dir=cache, keep_in_memory=True, **kwargs
    )


def _bad_json_line(path: Path) -> str | None:
    """Return 'file:line' of the first line of a JSONL file that is not a JSON object (Arrow's own count is off)."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                ok = not raw.strip() or isinstance(json.loads(raw), dict)
            except ValueError:
                ok = False
            if not ok:
                return f"{path}:{n}"
    return None


def read_table(table: Table) -> Iterator[tuple[str | None, datasets.Dataset]]:
    """Yield (split, rows) for `table`; Image columns come undecoded ({"bytes", "path"}), never as pictures."""
    datasets.disable_progress_bars()  # a bar per file reads as noise beside fedmemes's own output
    # A throwaway cache: datasets would otherwise keep an Arrow copy of the member's memes in ~/.cache.
    with tempfile.TemporaryDirectory(prefix="fedmemes-table-") as cache:
        try:
            loaded = _load(table.kind, table, cache)
        except (ValueError, OSError, TypeError, KeyError, datasets.exceptions.DatasetGenerationError) as e:
            cause = e.__cause__ or e
            where = _bad_json_line(table.file) if table.kind == "json" else None
            raise ValueError(
                f"{where or table.file}: cannot read it as {table.kind} ({type(cause).__name__}: {str(cause)[:200]}); "
                "fix the file or export it again"
            ) from e
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for name, ds in parts:
        split = table.split or (split_name(name) if name is not None else None)
        if name is not None and split is None:
            raise ValueError(f"{table.file}: split {name!r} is not train, dev/val/validation or test")
        for column, feature in ds.features.items():
            if isinstance(feature, datasets.Image):
                ds = ds.cast_column(column, datasets.Image(decode=False))
        yield split, ds
