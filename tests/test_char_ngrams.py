"""The character n-gram caption branch: stable hashing, cached inputs beside MiniLM's, a branch that learns any
script."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from sklearn.metrics import roc_auc_score

from fedmemes.config import build_model, load_config
from fedmemes.federation import engine
from fedmemes.models.components.char_ngrams import CharNgramText, char_ngrams, hash_ngrams
from fedmemes.models.components.text_encoder import FrozenTextEncoder

CAPTIONS = ["yeh meme bilkul bakwas hai", "ये मीम बिल्कुल बकवास है", "when tourists never change", ""]


def test_ngrams_are_words_and_marked_pieces_in_order_without_repeats():
    grams = char_ngrams("Aa aa", 2, 3)
    assert grams[:4] == ["w:aa", "<a", "aa", "a>"]  # casefolded: both words give one set
    assert len(grams) == len(set(grams)) and "<aa" in grams and "aa>" in grams
    assert char_ngrams("ＡＢ", 2, 2) == char_ngrams("ab", 2, 2)  # NFKC folds full-width letters


@pytest.mark.slow  # a fresh interpreter imports torch (seconds)
def test_bucket_ids_are_the_same_in_another_process():
    # Python salts str hashes per process: every client must hash a caption to the same buckets.
    grams = char_ngrams(CAPTIONS[0], 2, 4)
    here = hash_ngrams(grams, 8192)
    code = (
        "from fedmemes.models.components.char_ngrams import char_ngrams, hash_ngrams;"
        f"print(hash_ngrams(char_ngrams({CAPTIONS[0]!r}, 2, 4), 8192))"
    )
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert str(here) == there.strip()
    assert min(here) >= 1 and max(here) <= 8192  # 0 stays the padding id


def test_encode_puts_ngram_ids_before_minilms_vector_exactly():
    base = FrozenTextEncoder()
    enc = CharNgramText(base, buckets=1000, dim=16, max_ngrams=64)
    x = enc.encode(CAPTIONS)
    assert x.shape == (4, 64 + 384) and x.dtype == torch.float32
    ids = enc.ngram_ids(CAPTIONS)
    assert torch.equal(x[:, :64].long(), ids)  # float32 holds the ids exactly
    assert torch.allclose(x[:, 64:], base.encode(CAPTIONS))
    assert (ids[3] == 0).all() and (ids[0] > 0).sum() == min(64, len(char_ngrams(CAPTIONS[0], 2, 4)))
    pooled = enc.pooled(x)
    assert pooled.shape == (4, enc.dim) and enc.dim == 384 + 16 and torch.isfinite(pooled).all()
    assert enc.identity() != CharNgramText(base, buckets=999, dim=16, max_ngrams=64).identity()


def test_long_captions_keep_their_first_max_ngrams():
    enc = CharNgramText(None, buckets=50, dim=4, max_ngrams=8)
    ids = enc.ngram_ids(["a long caption with many words"])
    assert ids.shape == (1, 8) and (ids > 0).all()


def test_token_models_get_a_clear_error():
    with pytest.raises(ValueError, match="output=pooled"):
        CharNgramText(FrozenTextEncoder(output="tokens"))
    with pytest.raises(Exception, match="use model/text_encoder=frozen_tokens"):  # Hydra wraps the model's ValueError
        build_model(load_config("debug=tiny model=cross_attention model/text_encoder=frozen_ngrams"))


@pytest.mark.parametrize(
    ("encoder", "travelling"), [("frozen_ngrams", {"embed"}), ("finetune_ngrams", {"embed", "layer.4", "layer.5"})]
)
def test_the_table_travels_and_frozen_weights_do_not(encoder, travelling):
    model = build_model(load_config(f"debug=tiny model/text_encoder={encoder}"))
    keys = [k for k in model.state_dict() if k.startswith("text_encoder.")]
    assert "text_encoder.embed.weight" in keys
    assert not any("layer.0." in k or "embeddings." in k for k in keys)  # MiniLM's frozen part stays on the node
    assert {t for t in travelling if any(t in k for k in keys)} == travelling


def _code_mixed(n: int, seed: int) -> tuple[list[str], list[int]]:
    """Romanised Hindi-English captions whose label hangs on word stems under random spellings."""
    rng = random.Random(seed)
    hateful = ["gaddar", "jaahil", "kutte", "nikamma"]
    neutral = ["dost", "khana", "cricket", "shaadi"]
    filler = ["yeh", "log", "sab", "hai", "bhai", "kya", "the", "so", "bas", "dekho"]

    def spell(word: str) -> str:  # romanised spelling drifts: doubled or dropped vowels, a suffix
        word = word.replace("aa", rng.choice(["a", "aa", "aah"]))
        return word + rng.choice(["", "on", "o", "a"])

    texts, labels = [], []
    for _ in range(n):
        label = rng.random() < 0.5
        words = rng.sample(filler, 4) + [spell(rng.choice(hateful if label else neutral))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(int(label))
    return texts, labels


def test_ngrams_alone_learn_a_code_mixed_caption_task(one_thread):
    cfg = load_config("debug=tiny model=text_only model/text_encoder=ngrams")
    torch.manual_seed(0)
    model = build_model(cfg)
    encoder = instantiate(cfg.model.text_encoder)

    def tensors(seed: int) -> torch.utils.data.TensorDataset:
        texts, labels = _code_mixed(400, seed)
        n = len(texts)
        return torch.utils.data.TensorDataset(
            encoder.encode(texts), torch.zeros(n, 3, 8, 8), torch.tensor([[1.0, 0.0]] * n), torch.tensor(labels)
        )

    engine.train(model, tensors(1), epochs=8, lr=3e-3, batch_size=32, device=torch.device("cpu"))
    prob, label, _ = engine.predict(model, tensors(2), 64, torch.device("cpu"))
    assert roc_auc_score(np.asarray(label), np.asarray(prob)) > 0.95  # unseen captions, unseen spellings
