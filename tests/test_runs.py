"""`fedmemes runs`: finished, resumable and stopped runs are told apart, with their config and scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedmemes.tools.list_runs import find_runs, main, run_info


def _run(
    root: Path,
    name: str,
    *,
    rounds: list[float] | None = None,
    test: float | None = None,
    weights: bool = False,
    checkpoint: bool = False,
    model: str = "early_fusion",
    strategy: str = "fedavg",
) -> Path:
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    choices = {"model": model, "strategy": strategy, "partition": "dirichlet", "dataset": "synthetic"}
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    cfg = {
        "num_clients": 4,
        "num_rounds": 3,
        "model": {"_target_": "x.Model"},
        "server": {"strategy": {"_target_": "flwr.FedAvg"}},
        "partition": {"_target_": "p.Dirichlet"},
    }
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    if rounds is not None:
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        metrics = {
            "rounds": [{"round": i, "auroc": a} for i, a in enumerate(rounds)],
            "best_round": None,
            "test": None if test is None else {"auroc": test, "n": 10},
        }
        (d / "metrics.json").write_text(json.dumps(metrics))
    if weights:
        (d / "best.safetensors").write_bytes(b"x")
    if checkpoint:
        (d / "checkpoint.pt").write_bytes(b"x")
    return d


@pytest.fixture
def outputs(tmp_path) -> Path:
    root = tmp_path / "outputs"
    _run(root, "2026-01-01/10-00-00", rounds=[0.5, 0.71, 0.83, 0.79], test=0.812, weights=True, checkpoint=True)
    _run(root, "2026-01-02/11-00-00", rounds=[0.5, 0.64], checkpoint=True, model="late_fusion", strategy="fedprox")
    _run(root, "2026-01-03/12-00-00")  # failed before the server started: only Hydra's folder
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run")
    return root


def test_each_run_gets_its_config_scores_and_status(outputs):
    found = find_runs(outputs)
    assert [d.relative_to(outputs).as_posix() for d in found] == [
        "2026-01-01/10-00-00",
        "2026-01-02/11-00-00",
        "2026-01-03/12-00-00",
    ]
    done, paused, dead = (run_info(d) for d in found)
    assert (done.status, done.best_holdout_auroc, done.test_auroc, done.rounds) == ("finished", 0.83, 0.812, "3/3")
    assert (done.model, done.strategy, done.partition, done.clients) == ("early_fusion", "fedavg", "dirichlet", 4)
    assert (paused.status, paused.best_holdout_auroc, paused.test_auroc, paused.rounds) == (
        "resumable",
        0.64,
        None,
        "1/3",
    )
    assert (paused.model, paused.strategy) == ("late_fusion", "fedprox")
    assert (dead.status, dead.best_holdout_auroc, dead.rounds) == ("stopped", None, "0/3")


def test_round_zero_is_not_a_best_and_targets_stand_in_for_choices(tmp_path):
    d = _run(tmp_path, "r", rounds=[0.9, 0.6], test=0.6, weights=True)
    (d / ".hydra" / "hydra.yaml").unlink()  # e.g. a run dir copied without Hydra's runtime file
    info = run_info(d)
    assert info.best_holdout_auroc == 0.6  # round 0 is the untrained model
    assert (info.model, info.strategy, info.partition) == ("Model", "FedAvg", "Dirichlet")


def test_cli_prints_a_table_and_json(outputs, capsys):
    main([str(outputs)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["date", "model", "strategy"]
    finished = next(line for line in lines if "2026-01-01/10-00-00" in line)
    assert "0.830" in finished and "0.812" in finished and "finished" in finished and "fedavg" in finished
    assert "resumable" in next(line for line in lines if "2026-01-02" in line)
    assert "stopped" in next(line for line in lines if "2026-01-03" in line)
    main([str(outputs), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["status"] for r in rows} == {"finished", "resumable", "stopped"} and len(rows) == 3
    with pytest.raises(SystemExit, match="error: no folder at .*nope: runs live under outputs"):
        main([str(outputs / "nope")])
    main([str(outputs / "notes")])
    assert "no runs under" in capsys.readouterr().out


def test_a_runs_recipe_trials_are_part_of_it_not_runs_of_their_own(tmp_path):
    root = tmp_path / "outputs"
    run = _run(root, "2026-01-04/09-00-00", rounds=[0.5, 0.8], test=0.8, weights=True)
    trial = run / "recipes" / "frozen"
    trial.mkdir(parents=True)
    (trial / "metrics.json").write_text(json.dumps({"rounds": [{"round": 0, "auroc": 0.5}], "test": None}))
    (trial / "checkpoint.pt").write_bytes(b"x")
    assert find_runs(root) == [run, trial]  # a folder called recipes/ with no recipes.json beside it is a run
    (run / "recipes.json").write_text(json.dumps({"chosen": "frozen", "candidates": {}}))
    assert find_runs(root) == [run]
