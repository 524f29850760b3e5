"""Tests for fedmemes.data.local_dir: layout, id forms, every issue kind, both error policies."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from fedmemes.data.local_dir import LocalDirSource
from fedmemes.data.meme import DataError, DataIssue


def _img(root: Path, name: str, size: tuple[int, int] = (8, 8)) -> str:
    """Write a small PNG under root/img and return its relative path."""
    (root / "img").mkdir(exist_ok=True)
    Image.new("RGB", size, (90, 10, 10)).save(root / "img" / name)
    return f"img/{name}"


def _jsonl(path: Path, lines: list[object]) -> None:
    """Write dict lines as JSON, str lines verbatim."""
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))


def _row(i: int | str, img: str, label: object = 0, text: object = "a caption") -> dict:
    return {"id": i, "img": img, "label": label, "text": text}


@pytest.fixture
def data_clean(tmp_path: Path) -> Path:
    """A valid folder: int ids in train, zero-padded string ids in dev_seen, a shared image."""
    a, b, c = _img(tmp_path, "01235.png"), _img(tmp_path, "00042.png"), _img(tmp_path, "77777.png")
    _jsonl(tmp_path / "train.jsonl", [_row(1235, a, 1, "hello"), "", _row(77777, c, 0, "bye")])
    _jsonl(tmp_path / "dev_seen.jsonl", [_row("00042", b, 1, "dev one")])
    return tmp_path


def test_clean_folder_loads(data_clean: Path) -> None:
    src = LocalDirSource(data_clean)
    splits = src.load()
    assert set(splits) == {"train", "dev_seen"}
    assert [m.id for m in splits["train"]] == ["1235", "77777"]
    assert splits["dev_seen"][0].id == "00042"  # kept as written; the image path comes from "img"
    assert splits["dev_seen"][0].img == data_clean / "img" / "00042.png"
    assert splits["train"][0].img.is_absolute() and splits["train"][0].label == 1
    assert splits["train"][0].text == "hello" and src.issues == []


def test_first_release_dev_jsonl_is_the_dev_seen_split_and_unlabelled_test_is_ignored(data_clean: Path) -> None:
    (data_clean / "dev_seen.jsonl").rename(data_clean / "dev.jsonl")
    _jsonl(data_clean / "test.jsonl", [{"id": 5, "img": "img/77777.png", "text": "no label in this release"}])
    splits = LocalDirSource(data_clean).load()
    assert set(splits) == {"train", "dev_seen"}
    assert [m.id for m in splits["dev_seen"]] == ["00042"] and splits["dev_seen"][0].label == 1
    _jsonl(data_clean / "dev_seen.jsonl", [_row(9, "img/77777.png", 0, "the later file wins")])
    assert [m.id for m in LocalDirSource(data_clean).load()["dev_seen"]] == ["9"]


def test_missing_train_names_root_and_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train.jsonl") as e:
        LocalDirSource(tmp_path).load()
    assert str(tmp_path) in str(e.value) and "dev_seen.jsonl" in str(e.value)


def test_requested_split_must_exist(data_clean: Path) -> None:
    assert set(LocalDirSource(data_clean, splits=["train"]).load()) == {"train"}
    with pytest.raises(FileNotFoundError, match="test_seen.jsonl"):
        LocalDirSource(data_clean, splits=["train", "test_seen"]).load()


def test_unknown_on_error_lists_allowed() -> None:
    with pytest.raises(ValueError, match="'raise', 'skip'"):
        LocalDirSource(".", on_error="ignore")


@pytest.fixture
def data_messy(tmp_path: Path) -> Path:
    """One bad row of every kind, each on a known line, among good rows."""
    good = _img(tmp_path, "00001.png")
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png at all")
    big = _img(tmp_path, "big.png", (300, 300))
    _jsonl(
        tmp_path / "train.jsonl",
        [
            _row(1, good),  # 1 ok
            '{"id": 2, "img": ',  # 2 bad_json
            {"id": 3, "img": good, "label": 0},  # 3 missing_key text
            _row(4, good, label=2),  # 4 bad_label
            _row(5, good, label=True),  # 5 bad_label (bool)
            _row(6, good, label="1"),  # 6 bad_label (string)
            _row(7, good, text=""),  # 7 bad_text
            _row(8, good, text=["list"]),  # 8 bad_text
            _row(1, good),  # 9 duplicate_id of line 1
            _row(10, "img/nope.png"),  # 10 missing_image
            _row(11, "img/broken.png"),  # 11 unreadable_image
            _row(12, big),  # 12 image_too_large
            _row("00013", good),  # 13 holdout_overlap (dev has 13)
            _row(14, "../outside.png"),  # 14 bad_img
            _row(None, good),  # 15 bad_id
            "[1, 2]",  # 16 bad_json (not an object)
            _row(17, good, 1, "last good"),  # 17 ok
        ],
    )
    _jsonl(tmp_path / "dev_seen.jsonl", [_row(13, good), {"id": 20, "img": good, "text": "x"}])
    return tmp_path


EXPECTED = {
    ("train.jsonl", 2, "bad_json"),
    ("train.jsonl", 3, "missing_key"),
    ("train.jsonl", 4, "bad_label"),
    ("train.jsonl", 5, "bad_label"),
    ("train.jsonl", 6, "bad_label"),
    ("train.jsonl", 7, "bad_text"),
    ("train.jsonl", 8, "bad_text"),
    ("train.jsonl", 9, "duplicate_id"),
    ("train.jsonl", 10, "missing_image"),
    ("train.jsonl", 11, "unreadable_image"),
    ("train.jsonl", 12, "image_too_large"),
    ("train.jsonl", 13, "holdout_overlap"),
    ("train.jsonl", 14, "bad_img"),
    ("train.jsonl", 15, "bad_id"),
    ("train.jsonl", 16, "bad_json"),
    ("dev_seen.jsonl", 2, "missing_key"),
}


def _located(issues: list[DataIssue]) -> set[tuple[str, int, str]]:
    return {(Path(i.file).name, i.line, i.kind) for i in issues}


def test_raise_collects_every_issue(data_messy: Path) -> None:
    with pytest.raises(DataError) as e:
        LocalDirSource(data_messy, max_image_pixels=200 * 200).load()
    assert _located(e.value.issues) == EXPECTED
    msg = str(e.value)
    assert f"{data_messy / 'train.jsonl'}:3: missing_key: key 'text' is missing" in msg
    assert f"{data_messy / 'dev_seen.jsonl'}:2: missing_key: key 'label'" in msg
    assert "bad_label=3" in msg and "bad_json=2" in msg and "holdout_overlap=1" in msg
    assert "dataset.on_error=skip" in msg
    assert "img/nope.png" in msg and "integer 0 or 1" in msg


def test_skip_drops_bad_rows_and_keeps_good(data_messy: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = LocalDirSource(data_messy, on_error="skip", max_image_pixels=200 * 200)
    with caplog.at_level(logging.WARNING, logger="fedmemes.data.local_dir"):
        splits = src.load()
    assert [(m.id, m.text) for m in splits["train"]] == [("1", "a caption"), ("17", "last good")]
    assert [m.id for m in splits["dev_seen"]] == ["13"]
    assert _located(src.issues) == EXPECTED
    assert "16 data issue(s) (on_error=skip)" in caplog.text and "'bad_label': 3" in caplog.text


def test_check_images_off_still_finds_missing_files(data_messy: Path) -> None:
    src = LocalDirSource(data_messy, on_error="skip", check_images=False, max_image_pixels=200 * 200)
    splits = src.load()
    kinds = {i.kind for i in src.issues}
    assert "missing_image" in kinds and not kinds & {"unreadable_image", "image_too_large"}
    assert {"1", "11", "12", "17"} == {m.id for m in splits["train"]}


def test_holdout_overlap_matches_int_and_padded_ids_and_drops_train_row(tmp_path: Path) -> None:
    a = _img(tmp_path, "00042.png")
    _jsonl(tmp_path / "train.jsonl", [_row(42, a), _row(43, a)])
    _jsonl(tmp_path / "test_unseen.jsonl", [_row("00042", a)])
    src = LocalDirSource(tmp_path, on_error="skip")
    splits = src.load()
    assert [m.id for m in splits["train"]] == ["43"]
    assert [m.id for m in splits["test_unseen"]] == ["00042"]
    assert [(Path(i.file).name, i.line, i.kind) for i in src.issues] == [("train.jsonl", 1, "holdout_overlap")]


def test_shared_image_checked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _img(tmp_path, "00001.png")
    _jsonl(tmp_path / "train.jsonl", [_row(1, a), _row(2, a)])
    _jsonl(tmp_path / "dev_seen.jsonl", [_row(3, a)])
    import fedmemes.data.local_dir as local_dir

    calls: list[Path] = []
    real = local_dir.open_rgb
    monkeypatch.setattr(local_dir, "open_rgb", lambda p, m: calls.append(p) or real(p, m))
    assert sum(map(len, LocalDirSource(tmp_path).load().values())) == 3
    assert calls == [tmp_path / a]


def test_skip_with_no_usable_train_row_raises(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", ["{broken"])
    with pytest.raises(DataError, match="no usable row left"):
        LocalDirSource(tmp_path, on_error="skip").load()


def test_issue_str_and_error_truncation() -> None:
    issues = [DataIssue("t.jsonl", n, "bad_text", "fix it") for n in range(1, 26)]
    assert str(issues[0]) == "t.jsonl:1: bad_text: fix it"
    msg = str(DataError(issues))
    assert "t.jsonl:20:" in msg and "t.jsonl:21:" not in msg and "and 5 more" in msg
    assert "bad_text=25" in msg


# One bad row of each kind after one good row: (kind, file, writes the bad row given the folder).
def _bad_rows(root: Path, good: str) -> dict[str, tuple[str, object]]:
    (root / "img" / "trunc.png").write_bytes((root / good).read_bytes()[:30])
    Image.new("L", (300, 300)).save(root / "img" / "bomb.png")
    return {
        "bad_json": ("train", '{"id": 2, "img": '),
        "missing_key": ("train", {"id": 2, "img": good, "text": "no label"}),
        "bad_label": ("train", _row(2, good, label=3)),
        "bad_text": ("train", _row(2, good, text="   ")),
        "bad_id": ("train", _row("", good)),
        "bad_img": ("train", _row(2, "/etc/passwd")),
        "duplicate_id": ("train", _row(1, good)),
        "missing_image": ("train", _row(2, "img/gone.png")),
        "unreadable_image": ("train", _row(2, "img/trunc.png")),
        "image_too_large": ("train", _row(2, "img/bomb.png")),
        "holdout_overlap": ("train", _row(9, good)),
    }


KINDS = [
    "bad_json",
    "missing_key",
    "bad_label",
    "bad_text",
    "bad_id",
    "bad_img",
    "duplicate_id",
    "missing_image",
    "unreadable_image",
    "image_too_large",
    "holdout_overlap",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_each_kind_under_each_policy(tmp_path: Path, kind: str, policy: str) -> None:
    good = _img(tmp_path, "00001.png", (20, 20))
    _, bad = _bad_rows(tmp_path, good)[kind]
    _jsonl(tmp_path / "train.jsonl", [_row(1, good, 1, "fine"), bad, _row(3, good, 0, "also fine")])
    _jsonl(tmp_path / "dev_seen.jsonl", [_row(9, good)])
    src = LocalDirSource(tmp_path, on_error=policy, max_image_pixels=200 * 200)
    if policy == "raise":
        with pytest.raises(DataError) as e:
            src.load()
        assert _located(e.value.issues) == {("train.jsonl", 2, kind)}
        assert f"{tmp_path / 'train.jsonl'}:2: {kind}:" in str(e.value) and f"{kind}=1" in str(e.value)
    else:
        splits = src.load()
        assert [m.id for m in splits["train"]] == ["1", "3"]
        assert _located(src.issues) == {("train.jsonl", 2, kind)}


def test_keep_text_keeps_memes_with_bad_images_marked_missing(data_messy: Path) -> None:
    src = LocalDirSource(data_messy, on_error="keep_text", max_image_pixels=200 * 200)
    train = {m.id: m for m in src.load()["train"]}
    assert _located(src.issues) == EXPECTED  # every problem is still reported
    assert set(train) == {"1", "10", "11", "12", "14", "17"}  # + missing/unreadable/too large/bad path
    for i in ("10", "11", "12", "14"):
        assert train[i].has_text and not train[i].has_image and train[i].text == "a caption"
    assert train["1"].has_image and train["17"].has_image
    assert "3" not in train and "7" not in train  # bad captions are not rescued by keep_text


def test_keep_image_keeps_memes_with_bad_captions_marked_missing(data_messy: Path) -> None:
    src = LocalDirSource(data_messy, on_error="keep_image", max_image_pixels=200 * 200)
    train = {m.id: m for m in src.load()["train"]}
    assert set(train) == {"1", "3", "7", "8", "17"}  # + missing 'text' key, empty text, non-string text
    for i in ("3", "7", "8"):
        assert not train[i].has_text and train[i].has_image and train[i].text == ""
    assert "11" not in train  # a bad image is not rescued by keep_image


def test_keep_text_never_loads_the_bad_image(data_messy: Path, tmp_path: Path) -> None:
    from fedmemes.data.features import build_tensors

    class Enc:
        def identity(self) -> str:
            return "fake"

        def encode(self, texts: list[str]) -> torch.Tensor:
            return torch.ones(len(texts), 4)

    train = [
        m
        for m in LocalDirSource(data_messy, on_error="keep_text", max_image_pixels=200 * 200).load()["train"]
        if m.id in ("1", "11")
    ]  # 11's image is not a PNG at all
    t = build_tensors(train, Enc(), 8, tmp_path / "cache")
    assert t.mask.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert t.image[1].abs().sum() == 0 and t.image[0].float().mean() > 0  # masked row stays empty, never decoded
    assert t.text.shape == (2, 4)


def test_extra_row_keys_are_kept_as_meta(tmp_path: Path) -> None:
    a = _img(tmp_path, "00001.png")
    _jsonl(tmp_path / "train.jsonl", [{**_row(1, a), "client": "siteA", "nested": {"x": 1}}])
    assert LocalDirSource(tmp_path).load()["train"][0].meta == (("client", "siteA"),)


def _nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = [value]
    return value


# int over 4300 digits
@pytest.mark.parametrize(
    "line",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than Python's stack: RecursionError
        json.dumps(_row(2, "img/x.png", text=_nested(40))),
        '{"id": 2, "img": "img/x.png", "label": ' + "9" * 5000 + ', "text": "t"}',
    ],
)
def test_pathological_json_line_is_one_bad_json_issue(tmp_path: Path, line: str) -> None:
    good = _img(tmp_path, "00001.png")
    _jsonl(tmp_path / "train.jsonl", [_row(1, good, 1, "fine"), line, _row(3, good, 0, "also fine")])
    src = LocalDirSource(tmp_path, on_error="skip")
    assert [m.id for m in src.load()["train"]] == ["1", "3"]
    assert [(i.line, i.kind) for i in src.issues] == [(2, "bad_json")]
