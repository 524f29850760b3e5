"""Tests for fedmemes.data.synthetic: determinism, layout, the XOR rule and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fedmemes.data.synthetic as synthetic
from fedmemes.data.synthetic import SyntheticSource, caption_topic, generate, image_concept


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A generated dataset (600/100/100 at the default 96 px) and its loaded splits."""
    src = SyntheticSource(tmp_path_factory.mktemp("synth"), n_train=600, n_dev=100, n_test=100, seed=3)
    return src.folder, src.load()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", 12, 4, 4, seed=7, image_size=48))
    b = _files(generate(tmp_path / "b", 12, 4, 4, seed=7, image_size=48))
    c = _files(generate(tmp_path / "c", 12, 4, 4, seed=8, image_size=48))
    assert a == b
    assert a["train.jsonl"] != c["train.jsonl"]
    assert set(a) != set(c)  # other seed, other ids


def test_layout_counts_and_ids(data_synth: tuple[Path, dict]) -> None:
    folder, splits = data_synth
    assert {p.name for p in folder.glob("*.jsonl")} == {"train.jsonl", "dev_seen.jsonl", "test_seen.jsonl"}
    assert {s: len(m) for s, m in splits.items()} == {"train": 600, "dev_seen": 100, "test_seen": 100}
    ids = [m.id for ms in splits.values() for m in ms]
    assert len(set(ids)) == 800
    assert len(list((folder / "img").glob("*.png"))) == 800
    row = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    assert isinstance(row["id"], int) and row["img"] == f"img/{row['id']:05d}.png" and row["label"] in (0, 1)
    with Image.open(splits["dev_seen"][0].img) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (96, 96)


def test_label_is_topic_xor_image_concept_and_neither_alone(data_synth: tuple[Path, dict]) -> None:
    _, splits = data_synth
    for memes in splits.values():
        t = np.array([caption_topic(m.text) for m in memes])
        v = np.array([image_concept(np.asarray(Image.open(m.img))) for m in memes])
        y = np.array([m.label for m in memes])
        assert np.array_equal(y, t ^ v)
        assert abs(y.mean() - 0.5) < 0.05
        for concept in (t, v):
            assert abs(y[concept == 1].mean() - 0.5) < 0.1
            assert abs(y[concept == 0].mean() - 0.5) < 0.1
    train = splits["train"]
    assert len({m.text for m in train}) > 200  # a few hundred distinct captions
    # Benign confounders: some caption appears with both labels.
    labels_by_text: dict[str, set[int]] = {}
    for m in train:
        labels_by_text.setdefault(m.text, set()).add(m.label)
    assert any(len(s) == 2 for s in labels_by_text.values())


def test_image_concept_is_colour_of_the_picture() -> None:
    warm = np.full((32, 32, 3), (230, 120, 60), dtype=np.uint8)
    cool = np.full((32, 32, 3), (60, 200, 230), dtype=np.uint8)
    assert image_concept(warm) == 1 and image_concept(cool) == 0
    assert caption_topic("when my neighbours never change") == 1
    assert caption_topic("when mondays never change") == 0


def test_load_reuses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda out, **kw: calls.append(out) or real(out, **kw))
    first = SyntheticSource(tmp_path, n_train=8, n_dev=4, n_test=4, image_size=32).load()
    second = SyntheticSource(tmp_path, n_train=8, n_dev=4, n_test=4, image_size=32).load()
    assert len(calls) == 1 and first == second
    SyntheticSource(tmp_path, n_train=8, n_dev=4, n_test=4, image_size=32, seed=1).load()
    assert len(calls) == 2
    assert sorted(p.name.startswith("synthetic-") for p in tmp_path.iterdir()) == [True, True]


def test_lost_race_reuses_the_other_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = SyntheticSource(tmp_path, n_train=8, n_dev=4, n_test=4, image_size=32)
    real = synthetic.generate

    def racing(out: Path, **kw: object) -> Path:
        real(src.folder, **kw)  # another process finishes first
        return real(out, **kw)

    monkeypatch.setattr(synthetic, "generate", racing)
    assert len(src.load()["train"]) == 8
    assert [p.name for p in tmp_path.iterdir()] == [src.folder.name]  # no temp folder left


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(out: Path, **kw: object) -> Path:
        (out / "img").mkdir(parents=True)
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "generate", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        SyntheticSource(tmp_path, n_train=8).load()
    assert list(tmp_path.iterdir()) == []
