"""Tests for fedmemes.data.synthetic: determinism, layout, the version-1 XOR rule, version 2's properties, the cache."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import fedmemes.data.synthetic as synthetic
from fedmemes.data.synthetic import SyntheticSource, caption_topic, generate, image_concept
from fedmemes.data.synthetic_draw import text_layer
from fedmemes.data.synthetic_v2 import caption_cue, draw_latents, draw_memes, image_concept_v2, render_v2, true_label


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def data_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A version-1 dataset (600/100/100 at the default 96 px) and its loaded splits."""
    src = SyntheticSource(tmp_path_factory.mktemp("synth"), n_train=600, n_dev=100, n_test=100, seed=3, version=1)
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


# ---- version 2 -------------------------------------------------------------------------------


def _auroc_of_logreg(features: np.ndarray, y: np.ndarray) -> float:
    """Fit a logistic regression on half the rows; return its AUROC on the other half."""
    half = len(y) // 2
    model = LogisticRegression().fit(features[:half], y[:half])
    return float(roc_auc_score(y[half:], model.predict_proba(features[half:])[:, 1]))


@pytest.fixture(scope="module")
def v2_memes() -> list[dict]:
    """20,000 version-2 memes' hidden facts and captions (no pictures: fast)."""
    return draw_memes(np.random.default_rng(11), 20_000, label_noise=0.05)


def test_v2_caption_alone_and_picture_alone_carry_some_signal_the_pair_most(v2_memes: list[dict]) -> None:
    y = np.array([m["label"] for m in v2_memes])
    # Caption features read from the caption text itself: whom it targets, and an explicit phrase.
    t = np.array([caption_topic(m["text"]) for m in v2_memes])
    cue = np.array([caption_cue(m["text"]) for m in v2_memes])
    v = np.array([m["concept"] for m in v2_memes])
    text_auroc = _auroc_of_logreg(np.stack([t, cue, t * cue], 1), y)
    image_auroc = _auroc_of_logreg(v[:, None], y)
    pair_auroc = _auroc_of_logreg(np.stack([t, cue, v, t * cue, t * v, cue * v, t * cue * v], 1), y)
    assert 0.6 <= text_auroc <= 0.7, text_auroc
    assert 0.55 <= image_auroc <= 0.62, image_auroc
    assert pair_auroc >= 0.9 and pair_auroc <= 1 - 0.05 + 0.01, pair_auroc  # label noise caps it near 0.95
    assert 0.45 <= y.mean() <= 0.62  # not far from balanced


def test_v2_explicit_cues_benign_confounders_and_label_noise_rate(v2_memes: list[dict]) -> None:
    explicit = [m for m in v2_memes if m["cue"] and m["topic"]]
    assert 0.12 <= len(explicit) / len(v2_memes) <= 0.16
    assert all(m["clean"] == 1 for m in explicit)
    aimed_at_things = [m for m in v2_memes if m["cue"] and not m["topic"]]
    assert aimed_at_things and {m["clean"] for m in aimed_at_things} == {0, 1}  # the phrase alone does not decide
    # Benign confounders: each twin repeats its original's caption over the other concept, so the label flips.
    for before, twin in itertools.pairwise(v2_memes):
        if twin["twin"]:
            assert twin["text"] == before["text"] and twin["concept"] != before["concept"]
            assert twin["clean"] != before["clean"]
    assert 0.08 <= np.mean([m["twin"] for m in v2_memes]) <= 0.14
    flipped = np.mean([m["label"] != m["clean"] for m in v2_memes])
    assert abs(flipped - 0.05) < 0.006, flipped  # 3 standard errors at n=20,000
    rows = draw_latents(np.random.default_rng(0), 5_000, label_noise=0.2)
    assert abs(np.mean([r["label"] != r["clean"] for r in rows]) - 0.2) < 0.02
    assert all(r["label"] == r["clean"] for r in draw_latents(np.random.default_rng(0), 2_000, label_noise=0.0))


def test_v2_files_follow_the_rule_from_caption_and_pixels(tmp_path: Path) -> None:
    splits = SyntheticSource(tmp_path, n_train=160, n_dev=40, n_test=40, seed=5, image_size=48, label_noise=0.0).load()
    for memes in splits.values():
        for m in memes:
            pixels = np.asarray(Image.open(m.img))
            rule = true_label(caption_topic(m.text), caption_cue(m.text), image_concept_v2(pixels))
            assert m.label == rule, (m.text, m.img)


def test_v2_picture_has_several_objects_and_the_caption_drawn_on_it() -> None:
    size = 96
    mask, outline = text_layer("reminder that tourists are a plague", size, ImageFont.load_default(size=size // 10))
    empty = Image.new("L", mask.size, 0)
    # The same draws with and without the caption: they differ exactly where the caption is drawn.
    img = np.asarray(render_v2(np.random.default_rng(0), 1, (mask, outline), size, top=False)).astype(int)
    bare = np.asarray(render_v2(np.random.default_rng(0), 1, (empty, empty), size, top=False)).astype(int)
    where = np.zeros((size, size), bool)
    where[size - 1 - mask.height : size - 1] = np.asarray(outline) > 0
    changed = (img != bare).any(axis=2)
    assert changed.sum() > 150 and not (changed & ~where).any()
    band = img[size - 1 - mask.height : size - 1]
    ink, rim = np.asarray(mask) > 200, (np.asarray(outline) > 200) & (np.asarray(mask) == 0)
    assert band[ink].min() >= 190 and band[rim].max() <= 60  # light letters, dark outline: readable anywhere
    hsv = np.asarray(Image.fromarray(bare.astype(np.uint8)).convert("HSV"))
    assert (hsv[..., 1] >= 170).sum() > 0.03 * size * size  # saturated objects over a pale background
    assert image_concept_v2(img) == 1 and image_concept_v2(bare) == 1


def test_version_selects_the_generator_and_is_in_the_cache_key(tmp_path: Path) -> None:
    v1 = SyntheticSource(tmp_path, n_train=8, version=1)
    v2 = SyntheticSource(tmp_path, n_train=8, version=2)
    noisier = SyntheticSource(tmp_path, n_train=8, version=2, label_noise=0.1)
    assert len({v1.folder, v2.folder, noisier.folder}) == 3
    assert v1.folder == SyntheticSource(tmp_path, n_train=8, version=1, label_noise=0.3).folder  # v1 has no noise
    with pytest.raises(ValueError, match="dataset.source.version"):
        generate(tmp_path / "x", 8, 0, 0, seed=0, image_size=32, version=3)
