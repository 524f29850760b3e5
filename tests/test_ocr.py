"""OCR captions: a generated meme read back by Tesseract, the content-hash cache, dataset.ocr, a missing binary."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fedmemes.config_schema import ConfigError
from fedmemes.data import ocr
from fedmemes.data.meme import Meme
from fedmemes.data.ocr import OcrReader, OcrUnavailable, char_error_rate, fill_captions
from fedmemes.data.ocr_command import main as ocr_main

TOP, BOTTOM = "WHEN THE VACCINE ARRIVES", "BUT YOU READ THE FINE PRINT"
needs_tesseract = pytest.mark.skipif(
    shutil.which("tesseract") is None, reason="tesseract is not installed (apt-get install tesseract-ocr)"
)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """An impact-like bold face: DejaVu Sans Bold where the machine has it, else PIL's own (scalable)."""
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def make_meme(path: Path, top: str = TOP, bottom: str = BOTTOM, seed: int = 0) -> Path:
    """Draw a meme: a photo-like noisy picture, white bold captions with a dark outline at its top and bottom."""
    rng = np.random.default_rng(seed)
    w, h = 640, 480
    # Smooth colour blobs (a blurred coarse grid) plus pixel noise: bright and dark areas as in a photo.
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    noise = rng.normal(0, 25, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(coarse, dtype=float) + noise, 0, 255).astype(np.uint8))
    img = img.filter(ImageFilter.GaussianBlur(1))
    draw = ImageDraw.Draw(img)
    font = _font(32)
    for text, y in ((top, 20), (bottom, h - 70)):
        x = (w - draw.textlength(text, font=font)) / 2
        draw.text((x, y), text, font=font, fill="white", stroke_width=3, stroke_fill="black")
    img.save(path)
    return path


class CountingEngine:
    """A stand-in for Tesseract: returns fixed text and counts its calls."""

    def __init__(self, text: str = "read from the picture") -> None:
        self.text, self.calls = text, 0

    def __call__(self, image: Image.Image, lang: str) -> str:
        self.calls += 1
        return self.text


def test_char_error_rate_counts_edits_over_the_reference() -> None:
    assert char_error_rate("Hello  World", "hello world") == 0.0  # case and spacing do not count
    assert char_error_rate("abcd", "abxd") == pytest.approx(0.25)
    assert char_error_rate("abcd", "") == 1.0


@needs_tesseract
def test_command_reads_a_generated_meme_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "memes"
    folder.mkdir()
    # Seed 0 reads at 4% CER. Other backgrounds are harder for the same settings: seeds 0-5 average
    # 13.5% (3 of 6 under 10%); settings that read all 6 perfectly read HarMeme worse (0.61 vs 0.47 CER).
    make_meme(folder / "a.png", seed=0)
    ocr_main([str(folder), "--cache-dir", str(tmp_path / "cache")])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["img"] == "a.png" and row["text_source"] == "ocr"
    cer = char_error_rate(f"{TOP} {BOTTOM}", row["text"])
    assert cer < 0.10, f"character error rate {cer:.2f}: read {row['text']!r}"


def test_second_read_of_the_same_content_comes_from_the_cache(tmp_path: Path) -> None:
    a = make_meme(tmp_path / "a.png")
    copy = tmp_path / "copy.png"
    copy.write_bytes(a.read_bytes())  # another name, the same bytes: one read
    engine = CountingEngine()
    reader = OcrReader(tmp_path / "cache", engine=engine)
    assert reader.read(a) == reader.read(copy) == "read from the picture"
    assert engine.calls == 1
    (entry,) = (tmp_path / "cache" / "ocr").rglob("*.txt")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    # A fresh reader (another process) finds it on disk; other bytes are read anew.
    assert OcrReader(tmp_path / "cache", engine=engine).read(a) == "read from the picture"
    reader.read(make_meme(tmp_path / "b.png", seed=1))
    assert engine.calls == 2


def test_missing_fills_only_empty_captions_and_always_replaces_all(tmp_path: Path) -> None:
    img = make_meme(tmp_path / "a.png")
    memes = [
        Meme("1", img, "a typed caption", 1),
        Meme("2", img, "", 0),
        Meme("3", img, "caption marked unusable", 0, has_text=False),
        Meme("4", img, "", 1, has_image=False),  # no picture to read: left alone
    ]
    reader = OcrReader(tmp_path / "cache", engine=CountingEngine("read  from\nthe picture"))
    filled = fill_captions(memes, "missing", reader)
    assert [m.text for m in filled] == ["a typed caption", "read from the picture", "read from the picture", ""]
    assert [m.text_source for m in filled] == ["given", "ocr", "ocr", "given"]
    assert filled[2].has_text and filled[3] is memes[3]
    always = fill_captions(memes, "always", reader)
    assert [m.text_source for m in always] == ["ocr", "ocr", "ocr", "given"]
    assert fill_captions(memes, "never", reader) == memes
    with pytest.raises(ValueError, match="dataset.ocr must be one of missing, always, never"):
        fill_captions(memes, "sometimes", reader)


def test_a_missing_tesseract_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_meme(tmp_path / "a.png")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no tesseract anywhere on PATH
    with pytest.raises(OcrUnavailable, match=r"apt-get install tesseract-ocr"):
        OcrReader(tmp_path / "cache").read(img)


def test_dataset_ocr_applies_to_every_split_where_they_load(
    small_config: Callable[[str], DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedmemes.federation.node_datasets import load_splits

    engine = CountingEngine("ocr caption")
    monkeypatch.setattr(ocr, "tesseract", engine)
    monkeypatch.setattr(ocr, "VERSION", "stub")  # the stub's text stays out of the session's real OCR entries
    monkeypatch.setattr(ocr, "preprocess", lambda image: image)  # 360 memes: the stub never looks at the page
    given = load_splits(small_config(""))
    always = load_splits(small_config("dataset.ocr=always"))
    assert always.keys() == given.keys()
    for name, memes in always.items():
        assert {m.text for m in memes} == {"ocr caption"} and {m.text_source for m in memes} == {"ocr"}, name
        assert [m.id for m in memes] == [m.id for m in given[name]]
    # Every synthetic meme has a caption: `missing` keeps them all, and reads no image.
    calls = engine.calls
    assert load_splits(small_config("dataset.ocr=missing")) == given and engine.calls == calls
    with pytest.raises(ConfigError, match="dataset.ocr=sometimes is not allowed"):
        small_config("dataset.ocr=sometimes")


def test_command_reads_a_jsonl_and_writes_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "img").mkdir()
    make_meme(tmp_path / "img" / "01.png")
    src = tmp_path / "train.jsonl"
    src.write_text(json.dumps({"id": 1, "img": "img/01.png", "label": 0, "text": ""}) + "\n")
    monkeypatch.setattr(ocr, "tesseract", CountingEngine("read from the picture"))
    out = tmp_path / "ocr.jsonl"
    ocr_main([str(src), "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        {"id": 1, "img": "img/01.png", "text": "read from the picture", "text_source": "ocr"}
    ]
    src.write_text('{"id": 2, "text": "no image"}\n')
    with pytest.raises(SystemExit):
        ocr_main([str(src), "--cache-dir", str(tmp_path / "cache")])


def test_predictions_say_which_captions_ocr_read(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fedmemes.tools.predict import predict
    from fedmemes.tools.predict_inputs import Inputs

    memes = [Meme("1", tmp_path / "a.png", "typed", 1), Meme("2", tmp_path / "b.png", "read", 0, text_source="ocr")]
    run = SimpleNamespace(threshold=0.5, score=lambda memes, progress: np.array([0.9, 0.2][: len(memes)]))
    rows, _ = predict(run, Inputs(memes, [True, True], [], ["test", "test"]))  # type: ignore[arg-type]
    assert [(r["id"], r["pred"], r["text_source"]) for r in rows] == [("1", 1, "given"), ("2", 0, "ocr")]
    rows, _ = predict(run, Inputs(memes[:1], [True], [], ["test"]))  # type: ignore[arg-type]
    assert "text_source" not in rows[0]  # no OCR caption: the columns stay as they were
