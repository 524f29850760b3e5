"""A damaged feature cache heals: a bad entry is logged in one line, deleted and rebuilt; a full disk skips it."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fedmemes.data import cache_entry
from fedmemes.data.cache_entry import CHECKSUM, read_entry
from fedmemes.data.features import MemeTensors, build_tensors
from fedmemes.data.meme import Meme

LOGGER = "fedmemes.data.cache_entry"


class CountingEncoder:
    """A frozen text encoder that counts the captions it encodes."""

    def __init__(self) -> None:
        self.seen = 0

    def identity(self) -> str:
        return "counting"

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.seen += len(texts)
        return torch.tensor([[float(len(t)), float(ord(t[0])), 0.5] for t in texts])


class MeanImages:
    """An image encoder with a frozen part (like EfficientNet's trunk): the mean colour, counted."""

    batch_size = 2

    def __init__(self) -> None:
        self.seen = 0

    def identity(self) -> str:
        return "mean-colour"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += len(images)
        return images.float().mean(dim=(2, 3)) / 255


def _memes(folder: Path, texts: list[str], shade: int) -> list[Meme]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, text in enumerate(texts):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((12, 12, 3), shade + 30 * i, dtype=np.uint8)).save(path)
        out.append(Meme(id=f"{shade}-{i}", img=path, text=text, label=i % 2))
    return out


class Node:
    """One node's cache, built through build_tensors for two lists with no caption or image in common."""

    def __init__(self, root: Path, pixels: bool = False) -> None:
        self.cache, self.text_enc = root / "cache", CountingEncoder()
        self.image_enc = None if pixels else MeanImages()
        self.a = _memes(root / "a", ["aa", "bbb", "cccc"], 10)
        self.b = _memes(root / "b", ["dd", "eeeee"], 120)
        self.first_a, self.files_a = self.build(self.a), self.files()
        self.first_b = self.build(self.b)
        self.files_b = self.files() - self.files_a

    def build(self, memes: list[Meme]) -> MemeTensors:
        return build_tensors(memes, self.text_enc, 8, self.cache, self.image_enc)

    def files(self) -> set[Path]:
        return set((self.cache / "features").rglob("*.safetensors"))

    def file_a(self, kind: str) -> Path:
        """Return list a's file of one kind: textrows/imagerows (a store shard), text/imgfeat/image (a list's entry)."""
        match = [p for p in self.files_a if (p.parent.name if "rows" in kind else p.name).startswith(f"{kind}-")]
        assert len(match) == 1, (kind, self.files_a)
        return match[0]

    def encoded(self) -> int:
        return self.text_enc.seen + (self.image_enc.seen if self.image_enc else 0)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, path.stat().st_size, dtype=np.uint8).tobytes())


def _flip(path: Path) -> None:
    """Flip bytes of the tensor data (the file's tail), keeping the size and the header: only the checksum can tell."""
    data = bytearray(path.read_bytes())
    data[-3:] = bytes(b ^ 0x5A for b in data[-3:])
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "empty": _empty, "garbage": _garbage}
DAMAGE["checksum"] = _flip


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def _same(got: MemeTensors, want: MemeTensors, order: list[int]) -> None:
    assert torch.allclose(got.text, want.text[order]) and torch.allclose(got.image.float(), want.image[order].float())


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("kind", ["textrows", "imagerows"])
def test_a_damaged_shard_is_rebuilt_and_other_keys_never_fail_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, damage: str
) -> None:
    node = Node(tmp_path)
    shard = node.file_a(kind)
    DAMAGE[damage](shard)
    damaged, encoded = shard.read_bytes(), node.encoded()
    caplog.set_level(logging.INFO, LOGGER)

    # b reversed: a new list (so the store is read), none of whose keys the damaged shard holds.
    _same(node.build(node.b[::-1]), node.first_b, [1, 0])
    assert node.encoded() == encoded  # every row came from b's own shards
    if damage in ("truncated", "checksum"):  # its header still names its keys: the bytes are never read
        assert _warnings(caplog) == [] and shard.read_bytes() == damaged

    # a reversed: its rows are in the damaged shard, which is logged once, deleted and rebuilt.
    _same(node.build(node.a[::-1]), node.first_a, [2, 1, 0])
    assert node.encoded() == encoded + 3  # a's three captions (or images) encoded again, nothing else
    (line,) = _warnings(caplog)
    assert str(shard) in line and "rebuilt" in line
    # Rebuilt: captions are stored in sorted order, so theirs comes back under the same name; images in
    # list order, so a's reversed rows form another shard. Either way a's rows are cached again.
    assert _verified(shard) if kind == "textrows" else not shard.exists()
    _same(node.build([node.a[i] for i in (1, 2, 0)]), node.first_a, [1, 2, 0])
    assert node.encoded() == encoded + 3 and len(_warnings(caplog)) == 1
    assert node.files_b <= node.files()  # b's files are untouched


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("kind", ["text", "imgfeat", "image"])
def test_a_damaged_list_entry_is_rebuilt_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, damage: str
) -> None:
    node = Node(tmp_path, pixels=kind == "image")
    entry = node.file_a(kind)
    DAMAGE[damage](entry)
    encoded = node.encoded()
    caplog.set_level(logging.INFO, LOGGER)
    _same(node.build(node.b), node.first_b, [0, 1])  # another list's entry: no warning, nothing encoded
    assert _warnings(caplog) == [] and node.encoded() == encoded

    _same(node.build(node.a), node.first_a, [0, 1, 2])
    (line,) = _warnings(caplog)
    assert str(entry) in line and "rebuilt" in line
    assert node.encoded() == encoded  # rebuilt from the intact per-item store (pixels: read again)
    assert _verified(entry)


def test_an_entry_of_the_wrong_shape_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = Node(tmp_path)
    entry_a, entry_b = node.file_a("text"), next(p for p in node.files_b if p.name.startswith("text-"))
    entry_a.write_bytes(entry_b.read_bytes())  # a valid file, checksum and all, with b's 2 rows instead of 3
    caplog.set_level(logging.INFO, LOGGER)
    _same(node.build(node.a), node.first_a, [0, 1, 2])
    (line,) = _warnings(caplog)
    assert str(entry_a) in line and "expected 3 rows" in line
    assert _verified(entry_a) and load_file(entry_a)["x"].shape[0] == 3


def test_an_entry_written_before_checksums_is_kept_and_given_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    shard = node.file_a("textrows")
    keys = _stored_metadata(shard)["keys"]
    save_file({"x": load_file(shard)["x"]}, shard, metadata={"keys": keys})  # as the previous release wrote it
    encoded = node.encoded()
    caplog.set_level(logging.INFO, LOGGER)
    _same(node.build(node.a[::-1]), node.first_a, [2, 1, 0])
    assert node.encoded() == encoded and _warnings(caplog) == []  # no re-encoding of a whole cache on upgrade
    assert _verified(shard) and _stored_metadata(shard)["keys"] == keys


def test_a_full_disk_skips_the_entry_and_leaves_no_temporary_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    write, temporaries = cache_entry.write_bytes, []

    def no_space(fd: int) -> None:
        temporaries.extend(tmp_path.rglob(".text-*.tmp"))  # the partial file that must not stay behind
        raise OSError(errno.ENOSPC, "No space left on device")

    def full_for_text_entries(path: Path, data: bytes) -> None:
        # The temporary file exists and holds its bytes when the disk turns out to be full (at fsync).
        with monkeypatch.context() as m:
            if path.name.startswith("text-"):
                m.setattr(os, "fsync", no_space)
            write(path, data)

    monkeypatch.setattr(cache_entry, "write_bytes", full_for_text_entries)
    caplog.set_level(logging.INFO, LOGGER)
    node = Node(tmp_path)  # builds a's and b's features on a disk that is full for their text entries
    features = node.cache / "features"
    want = torch.tensor([[2.0, 97, 0.5], [3, 98, 0.5], [4, 99, 0.5]])
    assert torch.allclose(node.first_a.text, want)  # the features are returned all the same
    lines = _warnings(caplog)
    assert len(lines) == 2 and all("disk full" in line and "MiB free on" in line for line in lines)  # a's, b's
    assert [p.name for p in features.iterdir() if p.name.startswith("text-")] == []
    assert len(temporaries) == 2 and list(node.cache.rglob("*.tmp")) == []  # none of them is left behind
    assert len(node.files_a) == 3  # a's two shards and image entry: only the failed writes are skipped

    monkeypatch.setattr(cache_entry, "write_bytes", write)  # space again: the next lookup caches the entry
    encoded = node.encoded()
    _same(node.build(node.a), node.first_a, [0, 1, 2])
    assert node.encoded() == encoded  # from the shards that were written
    (entry,) = [p for p in features.iterdir() if p.name.startswith("text-")]
    assert str(entry) in lines[0] and _verified(entry)  # the line named exactly this file


def _stored_metadata(path: Path) -> dict[str, str]:
    with safe_open(path, "pt") as f:
        return f.metadata() or {}


def _verified(path: Path) -> bool:
    """True when the file reads back through the cache's own checks and carries a checksum."""
    return read_entry(path) is not None and CHECKSUM in _stored_metadata(path)
