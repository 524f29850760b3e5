"""`fedmemes simulate -m`: a 2 x 3 sweep gives six run folders and one table; an Optuna sweep picks its best on dev."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedmemes.tools.run_scores import best_holdout_auroc
from fedmemes.tools.sweep_summary import group_rows, read_sweep

# conftest's TINY (one round on 240 memes at 32 px) on 2 clients, captions as char n-grams (no MiniLM to load in each
# actor): each job costs a Ray start and one round. One round is too short to learn the memes: the test checks the
# bookkeeping (folders, groups, means, the dev pick), not the learning.
SMALL = ("experiment=tiny_run", "num_clients=2", "model/text_encoder=ngrams")


def _fedmemes(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", *args], capture_output=True, text=True, timeout=900, check=False
    )


@pytest.mark.slow
def test_a_2x3_multirun_gives_six_run_folders_and_one_table_of_two_groups(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = _fedmemes(
        "simulate", "-m", "strategy=fedavg,fedprox", "random_seed=1,2,3", *SMALL, f"hydra.sweep.dir={sweep}"
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0", "1", "2", "3", "4", "5"]
    for job in jobs:
        assert json.loads((sweep / job / "metrics.json").read_text())["test"]["auroc"] is not None
    rows = group_rows(read_sweep(sweep))
    assert [(r["setting"], r["n"]) for r in rows] == [({"strategy": "fedavg"}, 3), ({"strategy": "fedprox"}, 3)]
    for row in rows:  # each row's mean and std are those of its three jobs' metrics.json
        tests = [json.loads((sweep / j / "metrics.json").read_text())["test"]["auroc"] for j in row["jobs"]]
        assert row["test_auroc"] == pytest.approx((statistics.fmean(tests), statistics.stdev(tests)))
    table = _fedmemes("runs", str(sweep))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:3]] == [["fedavg", "3"], ["fedprox", "3"]]
    assert "6 jobs; mean ± std over seeds 1,2,3" in table.stdout


@pytest.mark.slow
def test_an_optuna_sweep_records_four_trials_and_picks_the_best_dev_auroc(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the `sweep` extra: pip install -e .[sweep]")
    sweep = tmp_path / "optuna"
    run = _fedmemes(
        "simulate",
        "-m",
        "hydra/sweeper=optuna",  # fedmemes adds direction=maximize: the objective is the dev AUROC
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.sampler.seed=1",
        "lr=tag(log,interval(0.0001,0.03))",
        *SMALL,
        f"hydra.sweep.dir={sweep}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    jobs = read_sweep(sweep)
    assert len(jobs) == 4 and all(j.finished for j in jobs)
    assert len({j.overrides["lr"] for j in jobs}) == 4  # four trials, four learning rates
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    dev = {j.name: best_holdout_auroc(json.loads((sweep / j.name / "metrics.json").read_text())) for j in jobs}
    assert best["best_value"] == pytest.approx(max(v for v in dev.values() if v is not None))  # dev, maximised
    winner = next(j for j in jobs if float(j.overrides["lr"]) == pytest.approx(best["best_params"]["lr"]))
    assert dev[winner.name] == pytest.approx(best["best_value"])
    table = _fedmemes("runs", str(sweep)).stdout
    assert f"chosen on dev AUROC): job {winner.name}: lr=" in table
