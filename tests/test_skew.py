"""Modality skew and label noise: the right clients lose the right modality, seeded, at the set rates."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedmemes.data.meme import Meme
from fedmemes.data.skew import Skew, apply_skew, client_count


def _memes(n: int = 2000) -> list[Meme]:
    return [Meme(id=str(i), img=Path(f"/x/{i}.png"), text=f"t{i}", label=i % 2) for i in range(n)]


def test_share_or_count_of_clients() -> None:
    assert client_count(0.5, 4, "k") == 2 and client_count(2, 4, "k") == 2
    assert client_count(0.1, 3, "k") == 1 and client_count(0, 3, "k") == 0 and client_count(1.0, 3, "k") == 3
    with pytest.raises(ValueError, match="num_clients=3"):
        client_count(4, 3, "text_only_clients")
    with pytest.raises(ValueError, match="exceed num_clients=4"):
        Skew(text_only_clients=3, image_only_clients=2).roles(4)


def test_text_only_clients_really_have_no_images_and_image_only_no_text() -> None:
    skew = Skew(text_only_clients=0.25, image_only_clients=1, seed=3)
    roles = skew.roles(8)
    assert (
        roles.count("text_only") == 2
        and roles.count("image_only") == 1
        and roles == Skew(text_only_clients=0.25, image_only_clients=1, seed=3).roles(8)
    )
    for pid, role in enumerate(roles):
        memes, facts = apply_skew(_memes(50), skew, pid, 8)
        assert facts.modality == role and len(memes) == 50
        if role == "text_only":
            assert not any(m.has_image for m in memes) and all(m.has_text for m in memes)
        elif role == "image_only":
            assert not any(m.has_text for m in memes) and all(m.has_image for m in memes)
        else:
            assert all(m.has_text and m.has_image for m in memes)


def test_missing_rates_per_sample_never_both() -> None:
    memes, _ = apply_skew(_memes(), Skew(missing_text_rate=0.3, missing_image_rate=0.2, seed=1), 0, 2)
    no_text = sum(not m.has_text for m in memes) / len(memes)
    no_image = sum(not m.has_image for m in memes) / len(memes)
    # A meme drawn to lose both keeps one at random (6% here), so each rate drops by about 3 points.
    assert 0.23 < no_text < 0.31 and 0.13 < no_image < 0.21
    assert all(m.has_text or m.has_image for m in memes)


def test_label_noise_one_rate_or_a_list_seeded() -> None:
    clean = _memes()
    noisy, facts = apply_skew(clean, Skew(label_noise=0.2, seed=5), 1, 2)
    flipped = sum(a.label != b.label for a, b in zip(clean, noisy, strict=True))
    assert flipped == facts.n_flipped and 0.17 < flipped / len(clean) < 0.23
    assert apply_skew(clean, Skew(label_noise=0.2, seed=5), 1, 2)[0] == noisy  # seeded
    assert apply_skew(clean, Skew(label_noise=0.2, seed=6), 1, 2)[0] != noisy
    per_client = Skew(label_noise=(0.0, 0.5), seed=5)
    assert apply_skew(clean, per_client, 0, 2)[1].n_flipped == 0
    assert 0.45 < apply_skew(clean, per_client, 1, 2)[1].n_flipped / len(clean) < 0.55
    with pytest.raises(ValueError, match="one rate per client"):
        apply_skew(clean, per_client, 0, 3)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        apply_skew(clean, Skew(label_noise=1.5), 0, 2)


def test_memes_left_with_nothing_are_dropped_and_counted() -> None:
    memes = [
        Meme(id="a", img=Path("/x"), text="", label=0, has_text=False),
        Meme(id="b", img=Path("/y"), text="ok", label=1),
    ]
    out, facts = apply_skew(memes, Skew(text_only_clients=1), 0, 1)
    assert [m.id for m in out] == ["b"] and facts.n_dropped == 1 and not out[0].has_image


def test_from_config_reads_only_skew_keys() -> None:
    skew = Skew.from_config({"_target_": "x", "alpha": 0.3, "text_only_clients": 1, "label_noise": [0.1, 0.2]}, seed=9)
    assert skew == Skew(text_only_clients=1, label_noise=(0.1, 0.2), seed=9)
