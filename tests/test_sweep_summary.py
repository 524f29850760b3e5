"""`fedmemes runs SWEEP_DIR`: the grouped table of a sweep, on hand-made job folders (no run needed)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from fedmemes.tools import list_runs
from fedmemes.tools.sweep_summary import (
    best_job,
    format_sweep,
    group_jobs,
    group_rows,
    is_sweep,
    parse_overrides,
    read_sweep,
    swept_keys,
)

# (job, strategy, seed, dev AUROC per round 1..2, test AUROC, test macro-F1, seconds at the last round)
JOBS = [
    (0, "fedavg", 1, [0.70, 0.80], 0.75, 0.70, 10.0),
    (1, "fedavg", 2, [0.85, 0.82], 0.77, 0.72, 12.0),
    (2, "fedavg", 3, [0.60, 0.90], 0.79, 0.74, 14.0),
    (3, "fedprox", 1, [0.50, 0.60], 0.65, 0.60, 20.0),
    (4, "fedprox", 2, [0.62, 0.61], 0.66, 0.61, 22.0),
    (5, "fedprox", 3, [0.64, 0.55], 0.67, 0.62, 24.0),
]


def _job(sweep: Path, num: int, overrides: list[str], dev: list[float], test: dict[str, float] | None, secs: float):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    # round 0 (the untrained model) scores 0.99 here: it must never count as the best dev AUROC
    rounds = [{"round": 0, "auroc": 0.99, "seconds": 1.0}]
    rounds += [{"round": i + 1, "auroc": a, "seconds": secs * (i + 1) / len(dev)} for i, a in enumerate(dev)]
    (d / "metrics.json").write_text(json.dumps({"rounds": rounds, "best_round": 2, "test": test}))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A finished 2 x 3 sweep (strategy x random_seed) with a fixed num_rounds given to every job."""
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    for num, strategy, seed, dev, test, f1, secs in JOBS:
        overrides = [f"strategy={strategy}", f"random_seed={seed}", "num_rounds=2"]
        _job(tmp_path, num, overrides, dev, {"auroc": test, "f1_macro": f1}, secs)
    return tmp_path


def test_the_swept_keys_are_those_that_vary_and_never_the_seed(sweep: Path) -> None:
    jobs = read_sweep(sweep)
    assert [j.name for j in jobs] == ["0", "1", "2", "3", "4", "5"]
    assert swept_keys(jobs) == ["strategy"]  # num_rounds=2 is the same everywhere; random_seed is averaged over
    groups = group_jobs(jobs, swept_keys(jobs))
    assert [(g.values, [j.name for j in g.jobs]) for g in groups] == [
        (("fedavg",), ["0", "1", "2"]),
        (("fedprox",), ["3", "4", "5"]),
    ]


def test_each_group_has_mean_and_std_over_its_seeds(sweep: Path) -> None:
    rows = group_rows(read_sweep(sweep))
    assert [(r["setting"], r["n"]) for r in rows] == [({"strategy": "fedavg"}, 3), ({"strategy": "fedprox"}, 3)]
    fedavg = rows[0]
    dev = [0.80, 0.85, 0.90]  # best of rounds 1-2 per seed, round 0's 0.99 left out
    assert fedavg["dev_auroc"] == pytest.approx((statistics.fmean(dev), statistics.stdev(dev)))
    assert fedavg["test_auroc"] == pytest.approx((0.77, 0.02))
    assert fedavg["test_f1_macro"] == pytest.approx((0.72, 0.02))
    assert fedavg["seconds"] == pytest.approx((12.0, 2.0))
    assert rows[1]["dev_auroc"] == pytest.approx((statistics.fmean([0.6, 0.62, 0.64]), 0.02))


def test_the_table_prints_one_row_per_group(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    list_runs.main([str(sweep)])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["strategy", "n"]
    assert lines[1].split()[:3] == ["fedavg", "3", "0.850"] and "0.770 ± 0.020" in lines[1]
    assert lines[2].split()[:3] == ["fedprox", "3", "0.620"] and lines[2].rstrip().endswith("3,4,5")
    assert "6 jobs; mean ± std over seeds 1,2,3" in out and "not finished" not in out
    list_runs.main([str(sweep), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["n"] for r in rows] == [3, 3]
    list_runs.main([str(sweep), "--each"])  # each job as a run of its own
    assert len([line for line in capsys.readouterr().out.splitlines() if line.split()[-2:-1] == ["stopped"]]) == 6


def test_an_unfinished_job_is_named_and_left_out_of_n(sweep: Path) -> None:
    (sweep / "6" / ".hydra").mkdir(parents=True)  # a job that failed before its first round
    overrides = ["strategy=fedavg", "random_seed=4", "num_rounds=2"]
    (sweep / "6" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    jobs = read_sweep(sweep)
    out = format_sweep(jobs)
    assert "not finished (left out of n): jobs 6" in out
    assert [r["n"] for r in group_rows(jobs)] == [3, 3]
    assert [len(r["jobs"]) for r in group_rows(jobs)] == [4, 3]


def test_two_swept_keys_give_their_product_and_a_key_some_jobs_lack_counts(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").touch()
    for num, (lr, extra) in enumerate([("0.1", []), ("0.1", ["+server.patience=2"]), ("0.01", []), ("0.01", [])]):
        _job(tmp_path, num, [f"lr={lr}", "random_seed=1", *extra], [0.7], {"auroc": 0.7, "f1_macro": 0.7}, 5.0)
    jobs = read_sweep(tmp_path)
    assert swept_keys(jobs) == ["lr", "server.patience"]
    assert [(g.values, len(g.jobs)) for g in group_jobs(jobs, swept_keys(jobs))] == [
        (("0.1", "-"), 1),
        (("0.1", "2"), 1),
        (("0.01", "-"), 2),
    ]


def test_optuna_trials_are_rows_and_its_best_trial_is_named(tmp_path: Path) -> None:
    (tmp_path / "multirun.yaml").touch()
    for num, (lr, dev) in enumerate([(0.003, 0.7), (0.0004, 0.9), (0.02, 0.8)]):
        _job(tmp_path, num, [f"lr={lr}", "random_seed=1"], [dev], {"auroc": 0.5, "f1_macro": 0.5}, 5.0)
    best = {"name": "optuna", "best_params": {"lr": 0.0004}, "best_value": 0.9}
    (tmp_path / "optimization_results.yaml").write_text(yaml.safe_dump(best))
    jobs = read_sweep(tmp_path)
    assert best_job(jobs, best) is not None and best_job(jobs, best).name == "1"  # type: ignore[union-attr]
    assert best_job(jobs, {"best_params": {"lr": 0.0004}, "best_value": 0.7}) is None  # value and params must agree
    out = format_sweep(jobs, best)
    assert out.splitlines()[0].split()[:3] == ["lr", "n", "dev"]  # one row per trial: its lr is all that varies
    assert [line.split()[:2] for line in out.splitlines()[1:4]] == [["0.003", "1"], ["0.0004", "1"], ["0.02", "1"]]
    assert "Optuna's best trial (optimization_results.yaml, chosen on dev AUROC): job 1: lr=0.0004" in out


def test_a_plain_folder_is_not_a_sweep_and_overrides_parse(tmp_path: Path) -> None:
    assert not is_sweep(tmp_path)
    assert parse_overrides(["a=1", "+b.c=x=y", "~d", "++e=2"]) == {"a": "1", "b.c": "x=y", "d": "", "e": "2"}
