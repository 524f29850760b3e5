"""CLIP towers from a local folder: a tiny random CLIPConfig saved to a temp dir (never a download)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedmemes.config import build_model, load_config
from fedmemes.data.features import build_tensors
from fedmemes.data.meme import Meme
from fedmemes.models.components.clip import ClipImageEncoder, ClipTextEncoder

WORDS = ["<pad>", "<unk>", "a", "cat", "dog", "hate", "love", "meme", "the", "<eos>"]  # CLIP pools at <eos>


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(WORDS),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "eos_token_id": 9,
            "bos_token_id": 9,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = Whitespace()
    raw.post_processor = TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 9)])  # CLIP pools at <eos>
    PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    ).save_pretrained(folder)
    return folder


def test_text_tower_gives_projected_vectors_that_depend_on_the_caption(clip_dir):
    enc = ClipTextEncoder(str(clip_dir), max_length=16)
    out = enc.encode(["the cat", "the dog", "the cat"])
    assert out.shape == (3, 8) and enc.dim == 8 and out.dtype == torch.float32
    assert torch.allclose(out[0], out[2]) and not torch.allclose(out[0], out[1])
    assert enc.identity() != ClipTextEncoder(str(clip_dir), max_length=8).identity()


def test_image_tower_cached_embedding_equals_raw_image_path(clip_dir):
    enc = ClipImageEncoder(str(clip_dir), out_dim=4)
    images = torch.randint(0, 256, (3, 3, 48, 48), dtype=torch.uint8)
    emb = enc.encode_images(images)  # resized 48 -> 32 inside
    assert emb.shape == (3, 8)
    assert not torch.allclose(emb[0], emb[1])
    assert torch.allclose(enc(emb), enc(images.float() / 255), atol=1e-5)
    assert enc.regions(emb).shape == (3, 1, 4)


def test_missing_folder_names_the_key():
    with pytest.raises(ValueError, match="name_or_path"):
        ClipTextEncoder(None)
    with pytest.raises(FileNotFoundError, match="not found locally"):
        ClipImageEncoder("/nonexistent/clip")


def test_feature_interaction_on_clip_features_trains_only_the_head(clip_dir, tmp_path):
    path = str(clip_dir)
    cfg = load_config(
        f"model=feature_interaction model/text_encoder=clip model/image_encoder=clip "
        f"model.text_encoder.name_or_path={path} model.image_encoder.name_or_path={path} image_size=32"
    )
    model = build_model(cfg)
    state = model.state_dict()
    assert all("vision_model" not in k and "text_model" not in k for k in state)  # frozen towers never travel
    memes = []
    for i, text in enumerate(["the cat", "hate the dog", "love a meme"]):
        img = tmp_path / f"{i}.png"
        Image.fromarray(np.full((40, 40, 3), 60 * i, dtype=np.uint8)).save(img)
        memes.append(Meme(id=str(i), img=img, text=text, label=i % 2))
    t = build_tensors(memes, model.text_encoder, 32, tmp_path / "cache", model.image_encoder)
    assert t.text.shape == (3, 8) and t.image.shape == (3, 8) and t.image.dtype == torch.float32
    logits = model(t.text, t.image, t.mask)
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
