"""Feature cache: computed once, keyed by encoder identity and content, never stale."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedmemes.data.features import build_tensors
from fedmemes.data.meme import Meme


class CountingEncoder:
    def __init__(self, name: str = "a") -> None:
        self.name, self.calls, self.seen = name, 0, 0

    def identity(self) -> str:
        return self.name

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        self.seen += len(texts)
        return torch.tensor([[float(len(t)), float(ord(t[0]))] for t in texts])


def _memes(tmp_path: Path, texts: list[str]) -> list[Meme]:
    out = []
    for i, text in enumerate(texts):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.full((20, 20, 3), 40 * i, dtype=np.uint8)).save(path)
        out.append(Meme(id=str(i), img=path, text=text, label=i % 2, has_image=i != 1))
    return out


def test_tensors_shapes_mask_and_dedup(tmp_path):
    memes = _memes(tmp_path, ["aa", "bbb", "aa"])
    enc = CountingEncoder()
    t = build_tensors(memes, enc, 8, tmp_path / "cache")
    assert t.text.shape == (3, 2) and t.image.shape == (3, 3, 8, 8) and t.image.dtype == torch.uint8
    assert t.label.tolist() == [0, 1, 0] and t.mask.tolist() == [[1, 1], [1, 0], [1, 1]]
    assert enc.seen == 2  # each distinct caption encoded once
    assert torch.equal(t.text[0], t.text[2])
    assert int(t.image[2].float().mean()) == 80


def test_cache_hit_and_invalidation(tmp_path):
    memes = _memes(tmp_path, ["aa", "bbb"])
    enc = CountingEncoder()
    first = build_tensors(memes, enc, 8, tmp_path / "cache")
    again = build_tensors(memes, enc, 8, tmp_path / "cache")
    assert enc.calls == 1 and torch.equal(first.text, again.text)
    other = CountingEncoder("b")  # another encoder: never reuse a's vectors
    build_tensors(memes, other, 8, tmp_path / "cache")
    assert other.calls == 1
    changed = [memes[0], Meme(id="1", img=memes[1].img, text="ccc", label=1)]
    build_tensors(changed, enc, 8, tmp_path / "cache")
    assert enc.calls == 2  # a changed caption is re-encoded
    Image.fromarray(np.full((20, 20, 3), 250, dtype=np.uint8)).save(memes[0].img)
    fresh = build_tensors(memes, enc, 8, tmp_path / "cache")
    assert int(fresh.image[0].float().mean()) == 250  # a changed image file is re-read


class TokenEncoder(CountingEncoder):
    """Returns zero-padded (N, L, 2) token states, L = longest caption, like output=tokens."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(len(texts), max(len(t) for t in texts), 2, dtype=torch.float16)
        for i, t in enumerate(texts):
            out[i, : len(t)] = torch.tensor([[float(ord(c)), 1.0] for c in t])
        return out


def test_token_states_cached_and_padded(tmp_path):
    memes = _memes(tmp_path, ["ab", "cdef", "ab"])
    enc = TokenEncoder("tok")
    t = build_tensors(memes, enc, 8, tmp_path / "cache")
    assert t.text.shape == (3, 4, 2) and t.text.dtype == torch.float16
    assert t.text[0, 2:].abs().sum() == 0 and torch.equal(t.text[0], t.text[2])
    again = build_tensors(memes, enc, 8, tmp_path / "cache")
    assert enc.calls == 1 and torch.equal(again.text, t.text)
    # Same captions, pooled encoder of another identity: a fresh entry, never the token states.
    pooled = build_tensors(memes, CountingEncoder("pooled"), 8, tmp_path / "cache")
    assert pooled.text.shape == (3, 2)


def test_missing_caption_gets_a_zero_row_of_any_shape(tmp_path):
    memes = _memes(tmp_path, ["ab", "cdef"])
    memes[0] = Meme(id="0", img=memes[0].img, text="ab", label=0, has_text=False)
    t = build_tensors(memes, TokenEncoder("tok"), 8, tmp_path / "cache")
    assert t.text.shape == (2, 4, 2) and t.text[0].abs().sum() == 0 and t.mask[0].tolist() == [0, 1]


def test_real_encoder_identity_follows_settings_and_weight_files(tmp_path):
    from fedmemes.models.components.text_encoder import FrozenTextEncoder

    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    (folder / "config.json").write_text("{}")  # the encoder checks for a model folder when it is built
    enc = FrozenTextEncoder(str(folder))
    before = enc.identity()
    (folder / "model.safetensors").write_bytes(b"y" * 11)  # re-trained checkpoint, same folder
    assert enc.identity() != before
    ids = {
        FrozenTextEncoder(str(folder), **kw).identity()
        for kw in ({}, {"pooling": "cls"}, {"output": "tokens"}, {"max_length": 32})
    }
    assert len(ids) == 4
