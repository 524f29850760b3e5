"""`fedmemes simulate -m`: every swept value checked first, a failed job that lets the others run, Optuna maximising."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedmemes import cli
from fedmemes.bookkeeping import sweep_jobs
from fedmemes.bookkeeping.sweep_jobs import SweepJobFailed, check_variants, job_exit_as_failure, sweeper_defaults


def test_each_swept_value_is_checked_once_without_the_product() -> None:
    variants = check_variants(["num_rounds=1", "strategy=fedavg,fedprox", "random_seed=range(1,4)", "lr=interval(0,1)"])
    assert variants == [
        ["num_rounds=1", "strategy=fedavg", "random_seed=1"],  # lr: Optuna draws it, its default is checked
        ["num_rounds=1", "strategy=fedprox", "random_seed=1"],
        ["num_rounds=1", "strategy=fedavg", "random_seed=2"],
        ["num_rounds=1", "strategy=fedavg", "random_seed=3"],
    ]
    assert check_variants(["hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "+x=1,2"]) == [["+x=1"], ["+x=2"]]
    with pytest.raises(ValueError, match=r"lr=\(: .*key=a,b,c"):
        check_variants(["lr=("])


def test_a_bad_swept_value_fails_before_any_job(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["simulate", "-m", "strategy=fedavg,fedprx", "random_seed=1,2"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fedprx" in err and "fedprox" in err  # the bad value and the allowed ones


def test_optuna_maximises_unless_told_otherwise() -> None:
    assert sweeper_defaults(["-m", "hydra/sweeper=optuna"]) == ["hydra.sweeper.direction=maximize"]
    assert sweeper_defaults(["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=minimize"]) == []
    assert sweeper_defaults(["-m", "strategy=fedavg,fedprox"]) == []


def test_a_jobs_exit_becomes_a_failure_only_in_a_sweep(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SystemExit), job_exit_as_failure(tmp_path):  # a single run keeps its exit code
        raise SystemExit(4)
    monkeypatch.setattr(sweep_jobs, "in_multirun", lambda: True)
    with pytest.raises(SweepJobFailed, match=r"failed: exit code 4"), job_exit_as_failure(tmp_path):
        raise SystemExit(4)
    with pytest.raises(SweepJobFailed, match=r"failed: error: no data"), job_exit_as_failure(tmp_path):
        raise SystemExit("error: no data")
    with job_exit_as_failure(tmp_path):  # exit 0 is a finished job
        raise SystemExit(0)


def test_hydra_runs_the_other_jobs_after_one_fails_and_exits_1(tmp_path: Path) -> None:
    # A toy Hydra app with our wrapper: Hydra records an Exception as a failed job and runs the rest of the batch;
    # a bare SystemExit (a BaseException) would have ended the sweep at the failing job.
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            import hydra
            from hydra.core.hydra_config import HydraConfig
            from fedmemes.bookkeeping.sweep_jobs import job_exit_as_failure

            @hydra.main(config_path=None, version_base="1.3")
            def job(cfg) -> float:
                out = Path(HydraConfig.get().runtime.output_dir)
                with job_exit_as_failure(out):
                    if cfg.x == 2:
                        raise SystemExit(3)
                (out / "done").write_text(str(cfg.x))
                return float(cfg.x)

            job()
            """
        )
    )
    sweep = tmp_path / "sweep"
    out = subprocess.run(
        [sys.executable, str(app), "-m", "+x=1,2,3", f"hydra.sweep.dir={sweep}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert sorted(p.parent.name for p in sweep.glob("*/done")) == ["0", "2"]  # jobs 1 and 3 finished around job 2
    assert "failed: exit code 3" in out.stderr
