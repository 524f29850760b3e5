"""Choices made on the server's hold-out: recipe trials, early stopping with patience, the threshold's shrink to 0.5."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fedmemes.config import load_config
from fedmemes.federation import engine, recipe_search
from fedmemes.federation.testing import run_in_process

# Two recipes that differ in what the model is (its caption encoder), so the chosen one shows in every artefact;
# `still` (listed first, so it would win a tie) barely moves. Version 2 data: the caption alone carries signal.
RECIPES = '\'server.recipes={still: "lr=1e-9", hashed: "model/text_encoder=frozen_ngrams lr=0.01"}\''
SEARCH = f"experiment=tiny_run dataset.source.version=2 num_rounds=8 server.patience=1 server.trial_rounds=1 {RECIPES}"


def test_choose_keeps_the_best_hold_out_auroc_and_the_first_of_ties(tmp_path):
    curves = {"a": [0.6, 0.7], "b": [0.75, 0.65], "c": [0.75, math.nan], "d": [None, None]}
    record = recipe_search.choose({k: f"lr={i}" for i, k in enumerate(curves)}, lambda n, o: curves[n], tmp_path, 2)
    assert record["chosen"] == "b" and record["overrides"] == "lr=1"  # b and c tie at 0.75: b is listed first
    assert record["candidates"]["d"]["best"] is None  # a one-class hold-out: never preferred, still JSON
    assert record["candidates"]["c"]["holdout_auroc"] == [0.75, None]  # NaN is written as null
    assert recipe_search.load(tmp_path) == json.loads((tmp_path / recipe_search.RECIPES_FILE).read_text()) == record


def test_an_unfinished_search_is_not_taken_for_a_choice(tmp_path):
    def trial(name: str, overrides: str) -> list[float | None]:
        if name == "second":
            raise KeyboardInterrupt  # the server was stopped during the second trial
        return [0.7]

    with pytest.raises(KeyboardInterrupt):
        recipe_search.choose({"first": "lr=1", "second": "lr=2"}, trial, tmp_path, 1)
    assert json.loads((tmp_path / recipe_search.RECIPES_FILE).read_text())["candidates"]["first"]["best"] == 0.7
    assert recipe_search.load(tmp_path) is None  # a restart runs the search again


@pytest.mark.parametrize(("n", "expected"), [(177, 0.3 + 177 / 377 * 0.4), (10**9, 0.7), (0, 0.3)])
def test_the_threshold_moves_from_the_rate_threshold_to_the_pick_with_the_dev_splits_size(n, expected):
    assert engine.shrunk_threshold(0.7, 0.3, n, 200) == pytest.approx(expected)
    assert engine.shrunk_threshold(0.7, 0.3, n, 0) == pytest.approx(0.7)  # threshold_prior=0: the raw pick


def test_the_rate_threshold_flags_as_many_memes_as_are_hateful():
    prob = np.linspace(0.01, 0.4, 100)  # an early round's scores: all far below 0.5
    label = (np.arange(100) >= 70).astype(int)
    t = engine.rate_threshold(prob, label)
    assert (prob > t).sum() == 30 and t < 0.5


@pytest.fixture(scope="module")
def searched(tmp_path_factory, cache_dir, one_thread) -> tuple[Path, dict]:
    """A real ServerApp run in process: two recipe trials, then the chosen recipe with patience 1."""
    run_dir = tmp_path_factory.mktemp("searched") / "run"
    return run_dir, run_in_process(f"{SEARCH} cache_dir={cache_dir}", run_dir, 2)


@pytest.mark.slow  # a real ServerApp run, 2 trials + up to 8 rounds (about 15 s)
def test_the_recipe_with_the_better_hold_out_is_chosen_and_built_everywhere(searched):
    run_dir, metrics = searched
    trials = metrics["recipes"]["candidates"]
    assert metrics["recipes"]["chosen"] == "hashed" and trials["hashed"]["best"] > trials["still"]["best"]
    assert all(len(t["holdout_auroc"]) == 1 for t in trials.values())  # server.trial_rounds=1 each
    for name in trials:  # each trial is a run folder of its own, scored on the hold-out only
        trial = json.loads((run_dir / "recipes" / name / "metrics.json").read_text())
        assert trial["test"] is None and [r["round"] for r in trial["rounds"]] == [0, 1]
    winner = json.loads((run_dir / "recipes" / "hashed" / "metrics.json").read_text())["rounds"]
    assert metrics["rounds"][:2] == winner  # the run went on from the winner's trial (same seconds: not rerun)
    assert "char_ngrams.CharNgramText" in (run_dir / "config.yaml").read_text()  # predict rebuilds the winner
    assert "text_encoder.embed.weight" in load_file(run_dir / "best.safetensors")  # clients trained the winner too


@pytest.mark.slow  # a real ServerApp run, 2 trials + up to 8 rounds (about 15 s)
def test_patience_stops_after_rounds_without_a_better_hold_out_and_keeps_the_best(searched):
    run_dir, metrics = searched
    rounds = [r["round"] for r in metrics["rounds"]]
    best, stop = metrics["best_round"], metrics["stopped_early"]
    assert stop == rounds[-1] == best + 1 < 8  # server.patience=1, num_rounds=8 an upper bound
    aurocs = {r["round"]: r["auroc"] for r in metrics["rounds"]}
    assert aurocs[best] == max(aurocs.values()) and aurocs[stop] <= aurocs[best]
    best_state, final_state = load_file(run_dir / "best.safetensors"), load_file(run_dir / "final.safetensors")
    assert any(not torch.equal(best_state[k], final_state[k]) for k in best_state)  # final = the last round's
    assert metrics["test"]["auroc"] > 0.5 and "threshold_dev" in metrics["test"]


@pytest.mark.slow  # a real ServerApp run, 2 trials + up to 8 rounds (about 15 s)
def test_a_resumed_run_that_had_stopped_early_only_finishes(searched, cache_dir):
    run_dir, metrics = searched
    metrics_before = json.loads((run_dir / "metrics.json").read_text())
    calls: list[str] = []

    def client(msg, context):  # any training after the stop would call a client
        calls.append(msg.metadata.message_type)
        raise AssertionError("a finished search or an early-stopped run trained again")

    # a killed start left temporaries in the run folder and in a trial's (recipes/<name>/): the resume removes them
    stale = [run_dir / ".metrics.json.k1.tmp", run_dir / "recipes" / "still" / ".checkpoint.pt.k2.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    trial_files = sorted(p.name for p in (run_dir / "recipes" / "still").iterdir() if p not in stale)
    again = run_in_process(f"{SEARCH} cache_dir={cache_dir} resume={run_dir}", run_dir, 2, client)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in (run_dir / "recipes" / "still").iterdir()) == trial_files  # only those
    assert calls == [] and again["recipes"] == metrics["recipes"]
    assert again["rounds"] == metrics_before["rounds"] and again["test"]["auroc"] == pytest.approx(
        metrics["test"]["auroc"]
    )


def test_a_recipe_that_does_not_compose_stops_the_run_before_any_trial(tmp_path, cache_dir):
    def client(msg, context):
        raise AssertionError("no client trains while the recipes are bad")

    bad = '\'server.recipes={good: "lr=1e-3", typo: "model/text_encoder=frozn"}\''
    with pytest.raises(ValueError, match=r"server.recipes.typo='model/text_encoder=frozn': .*model/text_encoder"):
        run_in_process(f"experiment=tiny_run cache_dir={cache_dir} {bad}", tmp_path / "run", 2, client)
    assert not (tmp_path / "run" / "recipes").exists()


def test_recipes_must_map_names_to_override_strings():
    with pytest.raises(ValueError, match="server.recipes must be null or a mapping of names to override strings"):
        load_config("server.recipes={a:3}")
