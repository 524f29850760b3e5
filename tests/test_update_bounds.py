"""Update bounds: the weight cap's water-filling, the norm rule, the config keys, facts keyed by node."""

from __future__ import annotations

import numpy as np
import pytest

from fedmemes.config import build_strategy, load_config
from fedmemes.strategies.update_bounds import (
    UpdateBounds,
    capped_counts,
    clip_update,
    norm_bound,
    update_norm,
)


def test_capped_counts_water_filling():
    assert capped_counts([10, 10], 0.5) == [10, 10]
    assert capped_counts([10**12, 10, 10], 0.5) == [20, 10, 10]  # holds exactly half
    assert capped_counts([100, 100, 10, 10], 0.3) == [15, 15, 10, 10]  # 15 / 50 = 0.3 each
    assert capped_counts([30, 10], 0.5) == [10, 10]  # two clients: the cap is an equal say
    assert capped_counts([5], 0.5) == [5]  # one reply holds everything
    assert capped_counts([30, 10], None) == [30, 10]
    assert capped_counts([50, 0, 10], 0.5) == [10, 0, 10]  # a client with no text does not vote on the text block
    for counts, cap in (([1000, 3, 7, 90], 0.4), ([9, 9, 9, 1000, 1000], 0.25)):
        new = capped_counts(counts, cap)
        assert max(new) / sum(new) <= cap + 1e-12 and all(n <= c for n, c in zip(new, counts, strict=True))


def test_norm_rule_uses_the_lower_median_and_clips_onto_the_bound():
    bounds = UpdateBounds.parse("3*median", 0.5)
    assert norm_bound([1.0, 2.0, 1e30], bounds) == 6.0
    assert norm_bound([1.0, 1e30], bounds) == 3.0  # of two, the smaller sets the scale
    assert norm_bound([0.0, 0.0, 5.0], bounds) is None  # median 0: no relative bound
    assert norm_bound([1.0, 2.0], UpdateBounds.parse(["3*median", 4.0], None)) == 3.0
    assert norm_bound([1.0, 2.0], UpdateBounds.parse(None, None)) is None
    ref = {"w": np.zeros(4, np.float32)}
    clipped = clip_update(
        {"w": np.full(4, 1e38, np.float32)}, ref, update_norm({"w": np.full(4, 1e38, np.float32)}, ref), 2.0
    )
    assert clipped["w"].dtype == np.float32 and update_norm(clipped, ref) == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("bad", ["3*mean", -1.0, "median", True])
def test_bad_norm_rule_names_the_key(bad):
    with pytest.raises(ValueError, match="server.max_update_norm"):
        UpdateBounds.parse(bad)


def test_config_keys_reach_the_strategy():
    strategy = build_strategy(load_config("server.max_update_norm=5*median server.max_client_weight=null"))
    assert strategy.update_bounds == UpdateBounds(5.0, None, None, None)
    assert build_strategy(load_config("")).update_bounds == UpdateBounds(3.0, None, None, 2.0)  # 2/n
    fixed = build_strategy(load_config("server.max_client_weight=0.5")).update_bounds
    assert fixed == UpdateBounds(3.0, None, 0.5, None)
    with pytest.raises(ValueError, match="server.max_client_weight"):
        build_strategy(load_config("server.max_client_weight=1.5"))


@pytest.mark.parametrize(("replies", "cap"), [(1, 1.0), (2, 1.0), (3, 2 / 3), (4, 0.5), (10, 0.2)])
def test_the_default_cap_is_two_equal_shares_of_the_round(replies, cap):
    bounds = UpdateBounds.parse()
    assert bounds.weight_cap(replies) == pytest.approx(cap)
    sizes = [1315, 484]  # make demo's two honest clients: no cap, FedAvg's size weights
    assert capped_counts(sizes, bounds.weight_cap(2)) == sizes
