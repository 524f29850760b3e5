"""Every model variant runs on a folder in the original Hateful Memes layout, messy as real copies are.

`fedmemes simulate model=NAME dataset=hateful_memes dataset.root=DIR` on the real data goes through
exactly this path (LocalDirSource, hold-out splits, features, the apps); here the folder is made
from synthetic memes so that learning can be checked, then dressed like a real download: ids as
zero-padded strings in one file and ints in another, JPEG bytes behind `.png` names, RGBA and
palette images, large non-square images, and dev_unseen/test_unseen files that share ids with
dev_seen (as the real ones do) and must neither train nor score.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

import fedmemes
from fedmemes.data.synthetic import generate
from fedmemes.federation.testing import run_in_process

MODELS = sorted(p.stem for p in (Path(fedmemes.__file__).parent / "conf" / "model").glob("*.yaml"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _dress_like_a_download(root: Path) -> Path:
    """Turn a generated folder into one with the quirks of real copies of the dataset."""
    train = _rows(root / "train.jsonl")
    for i, row in enumerate(train):
        row["id"] = f"{row['id']:05d}"  # zero-padded strings here, ints in the other files
        path = root / row["img"]
        img = Image.open(path).convert("RGB")
        if i % 5 == 1:
            img.save(path, format="JPEG", quality=90)  # JPEG bytes behind a .png name
        elif i % 5 == 2:
            img.convert("RGBA").save(path)
        elif i % 5 == 3:
            img.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
        elif i % 5 == 4:
            img.resize((640, 410)).save(path)  # real memes are large and rarely square
    _write(root / "train.jsonl", train)
    dev = _rows(root / "dev_seen.jsonl")
    _write(root / "dev_unseen.jsonl", dev[: len(dev) // 2])  # shares ids with dev_seen, like the real one
    _write(root / "test_unseen.jsonl", _rows(root / "test_seen.jsonl")[:5])
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = generate(tmp_path_factory.mktemp("hm"), n_train=400, n_dev=60, n_test=60, seed=3, image_size=64, version=1)
    return _dress_like_a_download(root)


def _run(folder: Path, cache: Path, run_dir: Path, extra: str) -> dict:
    base = (
        f"dataset=hateful_memes dataset.root={folder} cache_dir={cache} partition=iid num_clients=2 "
        f"image_size=32 local_val_share=0.1 {extra}"
    )
    return run_in_process(base, run_dir, 2)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_runs_on_an_original_layout_folder(model, folder, cache_dir, tmp_path, one_thread):
    metrics = _run(folder, cache_dir, tmp_path, f"model={model} num_rounds=2")
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    assert metrics["test"]["n"] == 60  # test_seen only: test_unseen is neither trained on nor scored
    assert all(r["n"] == 60 for r in metrics["rounds"])  # dev_seen scored every round
    assert sum(c["n_train"] for c in metrics["nodes"]) + 40 == 400  # 10% of each share kept back
    assert math.isfinite(metrics["test"]["loss"]) and 0.0 <= metrics["test"]["auroc"] <= 1.0
    assert metrics["rounds"][-1]["loss"] != metrics["rounds"][0]["loss"]  # the global model moved
    assert metrics["data_issues"] == {}


@pytest.mark.parametrize("model", ["early_fusion", "feature_interaction"])
def test_multimodal_models_learn_the_pair_from_such_a_folder(model, folder, cache_dir, tmp_path, one_thread):
    metrics = _run(folder, cache_dir, tmp_path, f"model={model} num_rounds=4 num_epochs=2")
    assert metrics["test"]["auroc"] >= 0.85, metrics["rounds"]
