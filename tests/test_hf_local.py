"""model/text_encoder=hf_local: any local transformers encoder folder, here a tiny random BERT saved to a temp dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from fedmemes.config import build_model, load_config
from fedmemes.models.components.text_encoder import FrozenTextEncoder, load_frozen

# A few romanised Hindi/Urdu and English words: the rest (Devanagari included) falls to [UNK] or word pieces.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yeh", "meme", "bilkul", "bakwas", "hai", "the", "vaccine"]
VOCAB += ["is", "a", "hoax", "##s", "##a", "b", "k", "w", ","]
CAPTIONS = ["yeh meme bilkul bakwas hai", "the vaccine is a hoax"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    """Save a random 2-layer, 32-wide BERT and a WordPiece tokenizer over VOCAB, as save_pretrained writes them."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordPiece
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)
    raw = Tokenizer(WordPiece({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    raw.normalizer = BertNormalizer(lowercase=True)
    raw.pre_tokenizer = BertPreTokenizer()
    raw.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", VOCAB.index("[CLS]")), ("[SEP]", VOCAB.index("[SEP]"))]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
    ).save_pretrained(folder)
    return folder


def _config(path: Path | str, extra: str = ""):
    return load_config(f"model/text_encoder=hf_local model.text_encoder.name_or_path={path} {extra}")


def test_hf_local_encodes_captions_with_the_folder_model(bert_dir):
    enc = instantiate(_config(bert_dir).model.text_encoder)
    assert isinstance(enc, FrozenTextEncoder) and enc.name_or_path == str(bert_dir) and enc.dim == 32
    vecs = enc.encode(CAPTIONS)
    assert vecs.shape == (2, 32) and vecs.dtype == torch.float32 and torch.isfinite(vecs).all()
    assert not torch.allclose(vecs[0], vecs[1])
    assert torch.allclose(enc.encode(CAPTIONS[:1])[0], vecs[0], atol=1e-5)  # frozen, eval: same caption, same vector


def test_code_mixed_and_non_latin_captions_encode(bert_dir):
    enc = FrozenTextEncoder(str(bert_dir))
    captions = ["यह मीम बिल्कुल बकवास है", "yeh meme बकवास hai 😂", "ye meme bkws h", "", "ہے بکواس"]
    vecs = enc.encode(captions)
    assert vecs.shape == (5, 32) and torch.isfinite(vecs).all()
    assert len({tuple(v.round(decimals=4).tolist()) for v in vecs}) >= 4  # unknown scripts still give distinct rows


def test_early_fusion_on_hf_local_builds_and_runs_a_forward_pass(bert_dir):
    model = build_model(_config(bert_dir, "model=early_fusion model.text_hidden_dim=16"))
    text = model.text_encoder.encode(CAPTIONS)
    logits = model(text, torch.rand(2, 3, 32, 32), torch.ones(2, 2))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert not any("embeddings" in k or "attention" in k for k in model.state_dict())  # frozen BERT never travels
    linear = next(m for m in model.text_proj if isinstance(m, torch.nn.Linear))
    assert linear.in_features == 32  # the projection follows the folder model's width


def test_a_missing_or_wrong_folder_is_one_line_naming_key_path_and_fix(tmp_path):
    for path, kind, says in (
        (tmp_path / "nope", FileNotFoundError, "does not exist"),
        (tmp_path, FileNotFoundError, "has no config.json"),
    ):
        with pytest.raises(kind) as err:
            FrozenTextEncoder(str(path))
        text = str(err.value)
        assert "\n" not in text and says in text and str(path) in text
        assert text.startswith(f"model.text_encoder.name_or_path={path}") and "save_pretrained" in text
    (tmp_path / "config.json").write_text("{}")  # a config.json, but no model_type and no weights
    with pytest.raises(ValueError) as err:
        FrozenTextEncoder(str(tmp_path)).encode(["a caption"])
    assert "\n" not in str(err.value) and "model.text_encoder.name_or_path" in str(err.value)
    with pytest.raises(Exception, match="name_or_path"):  # Hydra wraps it; the key is still named
        build_model(_config(tmp_path / "nope"))


def test_hf_local_requires_a_path():
    with pytest.raises(Exception, match="model.text_encoder.name_or_path"):
        build_model(load_config("model/text_encoder=hf_local"))


def test_a_model_is_built_from_the_folders_width_without_loading_its_weights(bert_dir, tmp_path):
    load_frozen.cache_clear()
    model = build_model(_config(bert_dir, "model=early_fusion model.text_hidden_dim=16"))
    assert next(m for m in model.text_proj if isinstance(m, torch.nn.Linear)).in_features == 32
    assert load_frozen.cache_info().currsize == 0  # config.json named the width: transformers loaded nothing
    # A config.json without hidden_size: transformers is asked, and a folder it cannot load still fails in one line.
    (tmp_path / "config.json").write_text('{"dim": 32}')
    with pytest.raises(ValueError, match="transformers cannot load it"):
        _ = FrozenTextEncoder(str(tmp_path)).dim
