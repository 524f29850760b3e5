"""Re-drawn splits and caption noise (fedmemes.data.resplit) on generated folders in both layouts."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_harmeme import make_harmeme

from fedmemes.data.harmeme import HarMemeSource
from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import DataError
from fedmemes.data.resplit import LAYOUTS, label_of, noise_caption, noisy_captions, read_splits, resplit
from fedmemes.data.synthetic import generate

SOURCES = {"harmeme": HarMemeSource, "hateful_memes": LocalDirSource}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def folder(request, tmp_path_factory) -> tuple[str, Path]:
    """A source folder in each layout; the hateful_memes one also holds a dev_unseen file to leave out."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "harmeme":
        return "harmeme", make_harmeme(root, sizes=(("train", 60), ("val", 15), ("test", 21)))
    generate(root, n_train=80, n_dev=20, n_test=30, seed=1, image_size=16, version=1)
    (root / "dev_unseen.jsonl").write_text((root / "dev_seen.jsonl").read_text())
    return "hateful_memes", root


def _ids(splits: dict[str, list[str]]) -> dict[str, list[str]]:
    return {s: [str(json.loads(ln)["id"]) for ln in lines] for s, lines in splits.items()}


def _positives(lines: list[str], layout: str) -> int:
    return sum(label_of(ln, LAYOUTS[layout]) or 0 for ln in lines)


def test_resplit_keeps_sizes_and_label_rates_and_links_images(folder, tmp_path):
    layout, src = folder
    source = read_splits(src, layout)
    stats = resplit(src, tmp_path / "k1", layout, seed=1)
    drawn = read_splits(tmp_path / "k1", layout)
    assert {s: len(v) for s, v in drawn.items()} == {s: len(v) for s, v in source.items()}
    assert {s: st["n"] for s, st in stats.items()} == {s: len(v) for s, v in source.items()}
    pool = [ln for lines in source.values() for ln in lines]
    rate = _positives(pool, layout) / len(pool)
    for split, lines in drawn.items():
        assert abs(_positives(lines, layout) - rate * len(lines)) <= 1  # stratified: within one meme
        assert stats[split]["positive_rate"] == pytest.approx(_positives(lines, layout) / len(lines))
    assert sorted(ln for lines in drawn.values() for ln in lines) == sorted(pool)  # every line verbatim, once
    assert _ids(drawn) != _ids(source)  # the split really changed
    images = tmp_path / "k1" / LAYOUTS[layout].images
    assert images.is_symlink() and images.resolve() == (src / LAYOUTS[layout].images).resolve()
    assert not (tmp_path / "k1" / "dev_unseen.jsonl").exists()  # extra files stay out: their ids repeat dev_seen's
    loaded = SOURCES[layout](tmp_path / "k1").load()  # the dataset's own loader reads it, images through the link
    assert sum(len(v) for v in loaded.values()) == len(pool)


def test_same_seed_same_split_other_seed_other_split(folder, tmp_path):
    layout, src = folder
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        resplit(src, tmp_path / name, layout, seed=seed)
    a, b, c = (read_splits(tmp_path / name, layout) for name in "abc")
    assert a == b and _ids(a) != _ids(c)
    resplit(src, tmp_path / "a", layout, seed=8)  # rewriting a previous re-split replaces it
    assert read_splits(tmp_path / "a", layout) == c


def test_seed_none_is_a_linked_copy_and_the_source_is_refused_as_destination(folder, tmp_path):
    layout, src = folder
    resplit(src, tmp_path / "copy", layout, seed=None)
    assert read_splits(tmp_path / "copy", layout) == read_splits(src, layout)
    with pytest.raises(ValueError, match="destination is the source"):
        resplit(src, src, layout, seed=1)


def test_unreadable_lines_are_drawn_verbatim_and_the_loader_reports_them(tmp_path):
    src = make_harmeme(tmp_path / "src", sizes=(("train", 12), ("val", 3), ("test", 3)))
    with (src / "annotations" / "train.jsonl").open("a") as f:
        f.write("{not json\n")
        row = {"id": "u", "image": "u.png", "labels": ["not harmful"], "text": "a\u2028b"}
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.write(json.dumps({"id": "x", "image": "x.png", "labels": "harmful", "text": "t"}) + "\n")
    stats = resplit(src, tmp_path / "k1", "harmeme", seed=3)
    assert sum(st["unreadable"] for st in stats.values()) == 2 and sum(st["n"] for st in stats.values()) == 21
    lines = [ln for v in read_splits(tmp_path / "k1", "harmeme").values() for ln in v]
    assert "{not json" in lines and sum("a\u2028b" in ln for ln in lines) == 1  # U+2028 inside a caption: one line
    with pytest.raises(DataError) as err:
        HarMemeSource(tmp_path / "k1").load()
    assert {"bad_json", "bad_label"} <= {i.kind for i in err.value.issues}


def test_missing_train_file_names_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="hateful_memes layout"):
        resplit(tmp_path, tmp_path / "out", "hateful_memes", seed=1)
    with pytest.raises(ValueError, match="allowed"):
        resplit(tmp_path, tmp_path / "out", "mmf", seed=1)


def _distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


CAPTIONS = [
    f"when the {w} says the vaccine is a hoax and everyone believes it number {i}"
    for i, w in enumerate(["government", "neighbour", "uncle", "news", "president"] * 40)
]


def _changed_share(rate: float) -> float:
    noisy = [noise_caption(c, rate, random.Random(i)) for i, c in enumerate(CAPTIONS)]
    return sum(_distance(c, n) for c, n in zip(CAPTIONS, noisy, strict=True)) / sum(map(len, CAPTIONS))


def test_noise_changes_characters_at_about_the_rate():
    assert noise_caption(CAPTIONS[0], 0.0, random.Random(0)) == CAPTIONS[0]
    low, high = _changed_share(0.05), _changed_share(0.2)
    # rate r alters ~r of the characters and drops ~r/2 of the words: edit distance 0.068 at 0.05, 0.243 at 0.2
    assert 0.04 < low < 0.12 and 0.16 < high < 0.4 and 2.5 < high / low < 6


def test_noise_keeps_scripts_and_never_empties_a_caption():
    text = "यह मीम बिल्कुल बकवास है"
    noisy = [noise_caption(text, 0.5, random.Random(i)) for i in range(50)]
    assert all(n.strip() and all(not c.isascii() or c == " " for c in n) for n in noisy)
    assert all(noise_caption("hi", 1.0, random.Random(i)) for i in range(50))


def test_noisy_captions_rewrites_every_split_deterministically(folder, tmp_path):
    layout, src = folder
    for name in ("a", "b"):
        resplit(src, tmp_path / name, layout, seed=2)
        assert noisy_captions(tmp_path / name, layout, rate=0.3, seed=5) > 0
    resplit(src, tmp_path / "c", layout, seed=2)
    noisy_captions(tmp_path / "c", layout, rate=0.3, seed=6)
    a, b, c = (read_splits(tmp_path / n, layout) for n in "abc")
    clean = {str(json.loads(ln)["id"]): json.loads(ln)["text"] for v in read_splits(src, layout).values() for ln in v}
    texts = {str(json.loads(ln)["id"]): json.loads(ln)["text"] for v in a.values() for ln in v}
    assert a == b and a != c  # same (seed, id): same caption; another seed: other noise
    assert texts.keys() == clean.keys() and sum(texts[k] != clean[k] for k in clean) > len(clean) / 3
    assert read_splits(src, layout) != a  # the source was never written through the link
    assert sum(len(v) for v in SOURCES[layout](tmp_path / "a").load().values()) == len(clean)


def test_noise_refuses_a_source_folder(folder):
    layout, src = folder
    with pytest.raises(ValueError, match="not a resplit"):
        noisy_captions(src, layout, rate=0.1, seed=1)
