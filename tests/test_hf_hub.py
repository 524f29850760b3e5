"""Tests for fedmemes.data.hf_hub with a faked snapshot_download (never the network)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
from PIL import Image

from fedmemes.data.hf_hub import HFHubSource


def _fake_download(root: Path, calls: list[dict]):
    """Return a snapshot_download stand-in that writes a small hub-like folder under root."""

    def fake(**kwargs: object) -> str:
        calls.append(kwargs)
        folder = root / "snapshot"
        (folder / "img").mkdir(parents=True, exist_ok=True)
        for i in (1, 2, 3, 5):  # image 4 is missing, as ~535 are in the real copy
            Image.new("RGB", (10, 10), (i * 40, 0, 0)).save(folder / "img" / f"{i:05d}.png")
        rows = {
            "train": [(1, 0), (2, 1), (4, 1)],
            "dev_seen": [(3, 1)],
            "test_seen": [(5, 0)],
            "dev_unseen": [(2, 1)],  # downloaded earlier for another run; must not leak in
        }
        for split, items in rows.items():
            (folder / f"{split}.jsonl").write_text(
                "".join(
                    json.dumps({"id": f"{i:05d}", "img": f"img/{i:05d}.png", "label": y, "text": f"t{i}"}) + "\n"
                    for i, y in items
                )
            )
        return str(folder)

    return fake


def test_load_explicit_splits_and_skip_missing_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_download(tmp_path, calls))
    src = HFHubSource(revision="abc123", cache_dir=str(tmp_path / "cache"))
    splits = src.load()
    assert calls == [
        {
            "repo_id": "neuralcatcher/hateful_memes",
            "repo_type": "dataset",
            "revision": "abc123",
            "cache_dir": str(tmp_path / "cache"),
            "allow_patterns": ["train.jsonl", "dev_seen.jsonl", "test_seen.jsonl", "img/*"],
        }
    ]
    assert set(splits) == {"train", "dev_seen", "test_seen"}
    assert [(m.id, m.label) for m in splits["train"]] == [("00001", 0), ("00002", 1)]
    assert [m.id for m in splits["dev_seen"]] == ["00003"]
    assert [(Path(i.file).name, i.line, i.kind) for i in src.issues] == [("train.jsonl", 3, "missing_image")]
    assert "00004.png" in src.issues[0].detail


def test_missing_split_file_names_repo_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub, "snapshot_download", _fake_download(tmp_path, []))
    with pytest.raises(FileNotFoundError, match="test_unseen.jsonl not found in dataset 'me/memes'"):
        HFHubSource(repo_id="me/memes", splits=["train", "test_unseen"]).load()


def test_network_error_suggests_local_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(**kwargs: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="could not be reached") as e:
        HFHubSource().load()
    assert "dataset=hateful_memes dataset.root=DIR" in str(e.value)
    assert "Name or service not known" in str(e.value)


def test_bad_arguments_fail_before_download() -> None:
    with pytest.raises(ValueError, match="'raise', 'skip'"):
        HFHubSource(on_error="warn")
    with pytest.raises(ValueError, match="dev_seen"):
        HFHubSource(splits=["train", "validation"])
