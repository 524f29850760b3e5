"""dataset=table: CSV, TSV, JSONL, Parquet and imagefolder fixtures (generated here) load, fail and convert right."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fedmemes.config import load_config
from fedmemes.data.convert import write_original_layout
from fedmemes.data.meme import DataError, Meme
from fedmemes.data.table import TableSource
from fedmemes.federation.node_datasets import load_splits

SPLIT_OF = {0: "train", 1: "train", 2: "train", 3: "val", 4: "test"}  # row i -> split i % 5
OURS = {"train": "train", "val": "dev_seen", "test": "test_seen"}


def png(i: int) -> bytes:
    """A distinct 12 px picture for meme i."""
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), (37 * i) % 256, dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def memes(n: int = 20) -> list[dict[str, Any]]:
    """The reference rows: id, caption, 0/1 label, split and image bytes."""
    return [
        {"id": f"{i:05d}", "text": f"caption {i}", "label": i % 2, "split": SPLIT_OF[i % 5], "png": png(i)}
        for i in range(n)
    ]


def write_images(folder: Path, rows: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        (folder / f"{r['id']}.png").write_bytes(r["png"])


def make_csv(root: Path, rows: list[dict[str, Any]], sep: str = ",", name: str = "memes.csv") -> Path:
    """A spreadsheet export: id, caption, img (relative path), label as text, split column."""
    write_images(root / "pics", rows)
    with (root / name).open("w", newline="") as f:
        w = csv.writer(f, delimiter=sep)
        w.writerow(["id", "caption", "img", "label", "split"])
        for r in rows:
            label = r.get("raw_label", ["not_hateful", "hateful"][r["label"]])
            w.writerow([r["id"], r["text"], f"pics/{r['id']}.png", label, r["split"]])
    return root / name


def make_jsonl(root: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """One jsonl file per split, booleans as labels; returns dataset.files."""
    write_images(root / "img", rows)
    files = {}
    for split in ("train", "val", "test"):
        with (root / f"{split}_part.jsonl").open("w") as f:
            for r in rows:
                if r["split"] == split:
                    label = r.get("raw_label", bool(r["label"]))
                    row = {"idx": r["id"], "text": r["text"], "image": f"img/{r['id']}.png", "hateful": label}
                    f.write(json.dumps(row) + "\n")
        files[{"val": "dev"}.get(split, split)] = f"{split}_part.jsonl"
    return files


def make_parquet(root: Path, rows: list[dict[str, Any]]) -> Path:
    """Image bytes inside a binary column, integer labels, split column."""
    root.mkdir(parents=True, exist_ok=True)
    labels: list[Any] = [r.get("raw_label", r["label"]) for r in rows]
    if any(isinstance(v, str) for v in labels):  # one column type: "0"/"1" beside a bad string label
        labels = [str(v) for v in labels]
    table = pa.table(
        {
            "meme_id": [r["id"] for r in rows],
            "sentence": [r["text"] for r in rows],
            "image": [r.get("raw_png", r["png"]) for r in rows],
            "label": labels,
            "split": [r["split"] for r in rows],
        }
    )
    pq.write_table(table, root / "memes.parquet")
    return root / "memes.parquet"


def make_imagefolder(root: Path, rows: list[dict[str, Any]]) -> Path:
    """datasets' imagefolder: train/ val/ test/ sub-folders, each with its images and metadata.csv (yes/no labels)."""
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        write_images(root / split, part)
        with (root / split / "metadata.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "id", "text", "label"])
            for r in part:
                w.writerow([f"{r['id']}.png", r["id"], r["text"], r.get("raw_label", ["no", "yes"][r["label"]])])
    return root


def expected(rows: list[dict[str, Any]], by_split: bool = True) -> dict[str, list[tuple[str, str, int, bytes]]]:
    out: dict[str, list[tuple[str, str, int, bytes]]] = {}
    for r in rows:
        out.setdefault(OURS[r["split"]] if by_split else "train", []).append((r["id"], r["text"], r["label"], r["png"]))
    return out


def seen(splits: dict[str, list[Meme]]) -> dict[str, list[tuple[str, str, int, bytes]]]:
    return {s: sorted((m.id, m.text, m.label, m.img.read_bytes()) for m in ms) for s, ms in splits.items()}


def build(fmt: str, root: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write format `fmt` under root; return TableSource keyword arguments that read it."""
    if fmt == "csv":
        return {"root": make_csv(root, rows)}
    if fmt == "tsv":
        return {"root": make_csv(root, rows, sep="\t", name="memes.tsv"), "columns": {"split": None}}
    if fmt == "jsonl":
        return {"root": root, "files": make_jsonl(root, rows)}
    if fmt == "parquet":
        return {"root": make_parquet(root, rows)}
    return {"root": make_imagefolder(root, rows)}


FORMATS = ["csv", "tsv", "jsonl", "parquet", "imagefolder"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_the_right_memes_labels_and_splits(fmt, tmp_path):
    rows = memes()
    kwargs = build(fmt, tmp_path / "data", rows)
    splits = TableSource(cache_dir=tmp_path / "cache", **kwargs).load()
    assert {s: len(m) for s, m in splits.items()} == {"train": 12, "dev_seen": 4, "test_seen": 4}
    assert seen(splits) == {s: sorted(v) for s, v in expected(rows).items()}
    if fmt == "parquet":  # bytes land in the cache, content-addressed, owner-only; never beside the data
        img = splits["train"][0].img
        assert img.parent == tmp_path / "cache" / "table_images" and (img.stat().st_mode & 0o777) == 0o600
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["memes.parquet"]


def test_guessed_columns_are_logged_once_per_table(tmp_path, caplog):
    path = make_csv(tmp_path, memes(5))
    with caplog.at_level("INFO", logger="fedmemes.data.table"):
        TableSource(path, cache_dir=tmp_path / "c").load()
    (said,) = [r.getMessage() for r in caplog.records if "reading columns" in r.getMessage()]
    assert f"{path}: reading columns id=id, text=caption, image=img, label=label, split=split" in said


def test_tsv_without_split_column_is_all_train_and_carved_by_the_config(tmp_path):
    root = make_csv(tmp_path / "d", memes(), sep="\t", name="m.tsv")
    # 'split' is guessed unless unmapped; drop it from the file to show the carving path
    text = "\n".join("\t".join(line.split("\t")[:4]) for line in root.read_text().splitlines())
    root.write_text(text + "\n")
    cfg = load_config(f"dataset=table dataset.root={root} cache_dir={tmp_path / 'c'}")
    from fedmemes.federation.node_datasets import holdout

    assert {s: len(m) for s, m in load_splits(cfg).items()} == {"train": 20}
    held = holdout(cfg)
    assert (len(held.pool), len(held.val), len(held.test)) == (16, 2, 2)
    assert {m.label for m in held.val} == {0, 1}  # stratified


# row 7 is the 5th training row: line 5 of train_part.jsonl, line 6 of train/metadata.csv (under its header)
BAD_WHERE = {
    "csv": ("memes.csv", 8),
    "tsv": ("memes.tsv", 8),
    "parquet": ("memes.parquet", 7),
    "jsonl": ("train_part.jsonl", 5),
    "imagefolder": ("metadata.csv", 6),
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_bad_label_names_file_and_row(fmt, tmp_path):
    rows = memes()
    rows[6]["raw_label"] = "maybe"  # row 7 (line 8 of a CSV, under its header)
    kwargs = build(fmt, tmp_path / "data", rows)
    with pytest.raises(DataError) as err:
        TableSource(cache_dir=tmp_path / "cache", **kwargs).load()
    (issue,) = err.value.issues
    assert issue.kind == "bad_label" and "'maybe'" in issue.detail and "dataset.label_map" in issue.detail
    name, line = BAD_WHERE[fmt]
    assert (Path(issue.file).name, issue.line) == (name, line)
    assert f"{name}:{line}: bad_label" in str(err.value)
    skipped = TableSource(cache_dir=tmp_path / "cache", on_error="skip", **kwargs)
    assert sum(len(m) for m in skipped.load().values()) == 19 and len(skipped.issues) == 1


def test_corrupt_image_bytes_in_parquet_are_counted_not_a_crash(tmp_path):
    rows = memes()
    rows[3]["raw_png"] = b"\x89PNG not really"
    path = make_parquet(tmp_path / "d", rows)
    with pytest.raises(DataError, match=r"memes.parquet:4: unreadable_image"):
        TableSource(path, cache_dir=tmp_path / "c").load()
    source = TableSource(path, cache_dir=tmp_path / "c", on_error="skip")
    assert sum(len(m) for m in source.load().values()) == 19
    assert [(i.line, i.kind) for i in source.issues] == [(4, "unreadable_image")]
    kept = TableSource(path, cache_dir=tmp_path / "c", on_error="keep_text").load()
    assert [m.id for ms in kept.values() for m in ms if not m.has_image] == ["00003"]


def test_unknown_column_and_missing_label_column_are_one_line_errors(tmp_path):
    path = make_csv(tmp_path, memes(4))
    with pytest.raises(ValueError, match=r"memes.csv: dataset.columns.text='caption_en' is not a column"):
        TableSource(path, columns={"text": "caption_en"}, cache_dir=tmp_path / "c").load()
    path.write_text("\n".join(",".join(line.split(",")[:3]) for line in path.read_text().splitlines()))
    with pytest.raises(ValueError, match=r"no label column .* dataset.columns.label=COLUMN"):
        TableSource(path, cache_dir=tmp_path / "c").load()


def test_user_label_map_and_unknown_split_value(tmp_path):
    rows = memes(6)
    for r in rows:
        r["raw_label"] = ["normal", "offensive"][r["label"]]
    rows[2]["split"] = "holdout"
    path = make_csv(tmp_path, rows)
    source = TableSource(path, label_map={"normal": 0, "offensive": 1}, cache_dir=tmp_path / "c", on_error="skip")
    splits = source.load()
    assert [(m.id, m.label) for m in splits["train"]] == [("00000", 0), ("00001", 1), ("00005", 1)]
    assert [(i.line, i.kind) for i in source.issues] == [(4, "bad_split")]


@pytest.mark.parametrize("fmt", ["csv", "parquet", "imagefolder"])
def test_convert_round_trips_through_the_original_layout(fmt, tmp_path):
    rows = memes()
    source = TableSource(cache_dir=tmp_path / "cache", **build(fmt, tmp_path / "data", rows))
    splits = source.load()
    counts = write_original_layout(splits, tmp_path / "out")
    assert counts == {"train": 12, "dev_seen": 4, "test_seen": 4}
    cfg = load_config(f"dataset=hateful_memes dataset.root={tmp_path / 'out'}")
    assert seen(load_splits(cfg)) == seen(splits)
    with pytest.raises(FileExistsError, match="not empty"):
        write_original_layout(splits, tmp_path / "out")


def test_convert_keeps_an_ocr_caption_marked(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(png(0))
    ocr = Meme(id="a", img=img, text="read from the picture", label=1, text_source="ocr")
    given = Meme(id="b", img=img, text="typed", label=0)
    write_original_layout({"train": [ocr, given]}, tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [r.get("text_source") for r in rows] == ["ocr", None]


def test_inspect_and_the_convert_command_work_on_a_table(tmp_path, monkeypatch, capsys):
    from fedmemes import cli
    from fedmemes.bookkeeping.run_steps import check_data

    path = make_parquet(tmp_path / "d", memes(40))
    overrides = ["dataset=table", f"dataset.root={path}", f"cache_dir={tmp_path / 'c'}"]
    cfg = load_config(" ".join(overrides) + " num_clients=2 partition=iid")
    table = check_data(cfg, tmp_path / "inspect")  # what `fedmemes data inspect` prints
    clients = json.loads((tmp_path / "inspect" / "clients.json").read_text())["clients"]
    assert sum(c["n_train"] + c["n_val"] for c in clients) == 24 and "client" in table

    # `fedmemes data convert ... out=DIR` reaches the Hydra job with out as a new key (+out)
    argv: list[list[str]] = []
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main sets it for Hydra; restored after the test
    monkeypatch.setitem(cli.COMMANDS, "data convert", lambda: argv.append(sys.argv))
    cli.main(["data", "convert", *overrides, f"out={tmp_path / 'out'}"])
    assert argv == [["fedmemes data convert", *overrides, f"+out={tmp_path / 'out'}"]]
    # the job itself, in process (a `fedmemes` child process costs 10-30 s on a busy machine)
    cli.data_convert.__wrapped__(load_config(" ".join([*overrides, f"+out={tmp_path / 'out'}"])))
    assert f"test_seen       8 memes -> {tmp_path / 'out' / 'test_seen'}.jsonl" in capsys.readouterr().out
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["img"].startswith("img/")
    with pytest.raises(SystemExit, match="is not empty"):
        cli.data_convert.__wrapped__(load_config(" ".join([*overrides, f"+out={tmp_path / 'out'}"])))


@pytest.mark.slow
def test_every_format_trains_one_round_and_predicts(tmp_path, one_thread, capsys):
    """Per format: a 1-round federation (2 in-process clients, 32 px) on the table, then predict on the run's test."""
    from sklearn.metrics import roc_auc_score

    from fedmemes.federation.testing import run_in_process
    from fedmemes.tools.predict import main as predict

    for fmt in FORMATS:
        kwargs = build(fmt, tmp_path / fmt / "data", memes(40))
        files = " ".join(f"dataset.files.{k}={v}" for k, v in kwargs.get("files", {}).items())
        overrides = (
            f"dataset=table dataset.root={kwargs['root']} {files} cache_dir={tmp_path / 'cache'} num_clients=2 "
            "partition=iid num_rounds=1 num_epochs=1 image_size=32 local_val_share=0"
        )
        metrics = run_in_process(overrides, tmp_path / fmt / "run", 2)
        assert [r["round"] for r in metrics["rounds"]] == [0, 1] and metrics["test"]["n"] == 8, fmt
        out = tmp_path / fmt / "test.jsonl"
        predict([str(tmp_path / fmt / "run"), "--run-split", "test", "--out", str(out)])
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["id"] for r in rows) == [f"{i:05d}" for i in range(40) if i % 5 == 4], fmt
        auroc = roc_auc_score([r["label"] for r in rows], [r["p_hateful"] for r in rows])
        assert abs(auroc - metrics["test"]["auroc"]) < 1e-3, fmt  # predict scores what the server scored
    assert "AUROC" in capsys.readouterr().out


def test_save_to_disk_folder_with_image_features_and_class_labels(tmp_path):
    import datasets

    rows = memes()
    parts = {}
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        part = [r for r in rows if r["split"] == ours]
        parts[theirs] = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": r["png"], "path": None} for r in part],
                "text": [r["text"] for r in part],
                "id": [r["id"] for r in part],
                "label": [r["label"] for r in part],
            },
            features=datasets.Features(
                image=datasets.Image(),
                text=datasets.Value("string"),
                id=datasets.Value("string"),
                label=datasets.ClassLabel(names=["not_hateful", "hateful"]),  # names, not indices, are mapped
            ),
        )
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "saved"))
    splits = TableSource(tmp_path / "saved", cache_dir=tmp_path / "c").load()
    assert seen(splits) == {s: sorted(v) for s, v in expected(rows).items()}


def test_imagefolder_without_metadata_takes_labels_from_folder_names(tmp_path):
    rows = memes(8)
    for r in rows:
        write_images(tmp_path / "memes" / ["not_hateful", "hateful"][r["label"]], [r])
    source = TableSource(tmp_path / "memes", cache_dir=tmp_path / "c", on_error="keep_image")  # no captions yet
    splits = source.load()
    got = sorted((m.img.read_bytes(), m.label) for m in splits["train"])
    assert got == sorted((r["png"], r["label"]) for r in rows)
    assert not any(m.has_text for m in splits["train"]) and {i.kind for i in source.issues} == {"missing_key"}


def test_a_folder_with_one_file_per_split(tmp_path):
    rows = memes()
    for split in ("train", "val", "test"):
        make_csv(tmp_path, [r for r in rows if r["split"] == split], name=f"{split}.csv")
    splits = TableSource(tmp_path, cache_dir=tmp_path / "c").load()
    assert seen(splits) == {s: sorted(v) for s, v in expected(rows).items()}


def test_broken_jsonl_line_and_train_rows_in_the_holdout_are_named(tmp_path):
    files = make_jsonl(tmp_path, memes())
    with (tmp_path / files["train"]).open("a") as f:
        f.write('{"idx": "00003", "text": "seen in dev", "image": "img/00003.png", "hateful": false}\n')
    source = TableSource(tmp_path, files=files, cache_dir=tmp_path / "c", on_error="skip")
    assert len(source.load()["train"]) == 12
    assert [(i.line, i.kind) for i in source.issues] == [(13, "holdout_overlap")]
    assert "also in dev_seen (val_part.jsonl)" in source.issues[0].detail
    with (tmp_path / files["train"]).open("a") as f:
        f.write('{"idx": "x", "text": "no closing brace"\n')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train_part.jsonl'}:14: cannot read it as json"):
        TableSource(tmp_path, files=files, cache_dir=tmp_path / "c").load()
