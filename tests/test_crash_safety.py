"""Faults and what survives them (README): damaged checkpoints, a cut test_predictions.csv, a full disk, a resume that
changes the experiment. Each row of the README's table is a test here; each asserts what is left on disk."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from deploy_helpers import failed_superlink, local_server_args
from flwr.app import ArrayRecord, Context, RecordDict
from omegaconf import OmegaConf
from run_helpers import bare_server_run

from fedmemes import cli
from fedmemes.bookkeeping import checkpoint, checkpoint_files, private_files, run_dir
from fedmemes.bookkeeping.resume_config import ResumeRefused
from fedmemes.bookkeeping.run_steps import EXIT_DISK, disk_error, disk_error_in, disk_errors_end_run
from fedmemes.deploy import server as deploy_server
from fedmemes.federation import server_app
from fedmemes.federation.server_run import ServerRun
from fedmemes.tools.report import command as report_command
from fedmemes.tools.report.runs import PREDICTIONS_FILE, load_run


def _server_run(folder: Path, monkeypatch: pytest.MonkeyPatch) -> ServerRun:
    return bare_server_run(folder, monkeypatch, num_rounds=5)


def _three_rounds(folder: Path, monkeypatch: pytest.MonkeyPatch) -> ServerRun:
    run = _server_run(folder, monkeypatch)
    for r in range(4):  # rounds 0..3: checkpoints after rounds 1, 2 and 3
        run.evaluate(r, ArrayRecord({"w": torch.full((2,), 0.1 * (r + 1))}))
    return run


def _round_of(path: Path) -> int:
    return int(torch.load(path, weights_only=True)["server_round"])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "a weight changed": lambda p: p.write_bytes(  # round 3's weight 0.4 -> 0.5 (bit rot): the entry's CRC fails
        p.read_bytes().replace(struct.pack("<f", 0.4), struct.pack("<f", 0.5), 1)
    ),
    "missing": lambda p: p.unlink(),
}


def test_the_two_latest_checkpoints_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _three_rounds(tmp_path, monkeypatch)
    assert _round_of(tmp_path / "checkpoint.pt") == 3
    assert _round_of(tmp_path / "checkpoint.prev.pt") == 2
    assert sorted(p.name for p in tmp_path.glob(".*")) == []  # no temporary, no link left
    assert (tmp_path / "checkpoint.prev.pt").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _three_rounds(tmp_path, monkeypatch)
    metrics = (tmp_path / "metrics.json").read_bytes()
    DAMAGE[damage](tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, "fedmemes"):
        ckpt = checkpoint.load(tmp_path)  # what resume=RUN reads
    assert ckpt.server_round == 2 and torch.allclose(ckpt.arrays["w"], torch.full((2,), 0.3))
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "checkpoint.pt is" in warning and "resuming from" in warning and "round 2" in warning
    assert "\n" not in warning and "overwrite" not in warning
    assert (tmp_path / "metrics.json").read_bytes() == metrics  # reading never changes a result file
    # the resumed server trains round 3 again; the damaged file never pushes the whole previous one out
    second = _server_run(tmp_path, monkeypatch)
    second.resume(ckpt)
    second.evaluate(1, ArrayRecord({"w": torch.full((2,), 0.5)}))
    assert _round_of(tmp_path / "checkpoint.pt") == 3
    assert _round_of(tmp_path / "checkpoint.prev.pt") == 2
    assert [r["round"] for r in second.history.as_dict()["rounds"]] == [0, 1, 2, 3]


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_no_readable_checkpoint_names_what_is_intact_and_deletes_nothing(
    damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _three_rounds(tmp_path, monkeypatch)
    DAMAGE[damage](tmp_path / "checkpoint.pt")
    DAMAGE["empty"](tmp_path / "checkpoint.prev.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    cfg = OmegaConf.create({"resume": str(tmp_path), "overwrite": False})
    with pytest.raises(SystemExit) as exit_:
        run_dir.prepare(tmp_path, cfg)  # `fedmemes simulate resume=RUN`'s check, before Ray starts
    line = str(exit_.value.code)
    assert line.startswith("error: ") and "\n" not in line
    assert "checkpoint.pt is" in line and "checkpoint.prev.pt is empty (0 bytes)" in line
    assert "Intact: metrics.json" in line and "overwrite" not in line and "another directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_empty_checkpoint_alone_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(checkpoint_files.CheckpointDamaged, match=r"checkpoint.pt is empty \(0 bytes\)"):
        checkpoint.load(tmp_path)


def test_a_missing_checkpoint_names_the_way(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resume=RUN_DIR needs a run directory"):
        checkpoint.load(tmp_path)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], list[str]]:
    """Return a switch: full_disk(NAME) makes the fsync of every later temporary file of NAME fail with ENOSPC, as a
    full disk does; it returns the temporaries that existed (to check that none is left)."""
    temporaries: dict[int, str] = {}
    made: list[str] = []
    real_mkstemp, real_fsync = tempfile.mkstemp, os.fsync

    def mkstemp(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)  # type: ignore[call-overload]
        temporaries[fd] = name
        return fd, name

    def switch(target: str) -> list[str]:
        def fsync(fd: int) -> None:
            name = temporaries.get(fd, "")
            if Path(name).name.startswith(f".{target}."):
                made.append(name)
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fsync", fsync)
        return made

    return switch


@pytest.mark.parametrize("target", ["checkpoint.pt", "metrics.json"])
def test_a_full_disk_ends_in_one_line_and_leaves_the_last_round_resumable(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_disk: Callable[[str], list[str]]
) -> None:
    run = _three_rounds(tmp_path, monkeypatch)
    metrics = (tmp_path / "metrics.json").read_bytes()
    temporaries = full_disk(target)
    with pytest.raises(OSError) as err:
        run.evaluate(4, ArrayRecord({"w": torch.full((2,), 0.9)}))
    assert temporaries and not any(Path(t).exists() for t in temporaries)  # the partial file was there, and is gone
    assert sorted(p.name for p in tmp_path.glob(".*")) == []
    line = disk_error(err.value, tmp_path)
    assert line is not None and "\n" not in line
    assert line.startswith(f"disk full writing {tmp_path / target} (") and "MiB free on /" in line
    assert f"fedmemes simulate resume={tmp_path}" in line
    monkeypatch.undo()  # space again
    if target == "metrics.json":  # written first: the round's checkpoint never started, metrics.json is round 3's
        assert (tmp_path / "metrics.json").read_bytes() == metrics
    # the last good checkpoint is the latest, whole (the previous name may already point at it: a hard link)
    assert (
        _round_of(tmp_path / "checkpoint.pt") == 3 and checkpoint_files.problem(tmp_path / "checkpoint.prev.pt") is None
    )
    second = _server_run(tmp_path, monkeypatch)  # resumable: round 4 is trained again
    second.resume(checkpoint.load(tmp_path))
    second.evaluate(1, ArrayRecord({"w": torch.full((2,), 0.9)}))
    assert [r["round"] for r in second.history.as_dict()["rounds"]] == [0, 1, 2, 3, 4]


def test_a_full_disk_exits_5_with_the_line_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, full_disk: Callable[[str], list[str]]
) -> None:
    full_disk("clients.json")
    # disk_errors_end_run: around `fedmemes simulate`'s own writes
    with caplog.at_level(logging.ERROR, "fedmemes"), pytest.raises(SystemExit) as exit_, disk_errors_end_run(tmp_path):
        private_files.write_text(tmp_path / "clients.json", "{}")
    assert exit_.value.code == EXIT_DISK == 5
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"disk full writing {tmp_path / 'clients.json'}")
    assert not list(tmp_path.iterdir())
    assert disk_error(ValueError("not a disk error"), tmp_path) is None


def test_stale_temporaries_are_removed_at_the_start(tmp_path: Path) -> None:
    stale = [tmp_path / ".checkpoint.pt.abc123.tmp", tmp_path / ".metrics.json.x.tmp", tmp_path / "checkpoint.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    (tmp_path / "metrics.json").write_text("{}")
    removed = private_files.remove_stale(tmp_path, (checkpoint_files.LEGACY_TEMP,))
    assert sorted(removed) == sorted(stale)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.fixture
def finished_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished tiny run (one round, test scored), free to damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


@pytest.mark.parametrize("cut", ["at a line end", "mid-row"])
def test_a_cut_test_predictions_file_is_refused_in_one_line(finished_run: Path, cut: str) -> None:
    path = finished_run / PREDICTIONS_FILE
    whole, report = load_run(finished_run), (finished_run / "report.html").read_bytes()
    assert whole.prob is not None and len(whole.prob) == 60  # debug=tiny's n_test
    lines = path.read_text().splitlines(keepends=True)
    text = "".join(lines[:31])  # the header and 30 of 60 rows
    path.write_text(text if cut == "at a line end" else text + lines[31][:4])
    with pytest.raises(SystemExit) as exit_:
        report_command.main([str(finished_run)])  # `fedmemes report RUN`
    line = str(exit_.value.code)
    assert line.startswith(f"error: {path}: ") and "\n" not in line
    assert ("30 rows after the header" in line) if cut == "at a line end" else ("row 32 is" in line)
    assert f"fedmemes predict {finished_run} --run-split test" in line
    assert (finished_run / "report.html").read_bytes() == report  # nothing drawn from half the rows


def _resume(run: Path, overrides: str) -> None:
    """The real ServerApp main resuming `run` after its last round: only the final scoring is left."""
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={"overrides": f"{overrides} resume={run}"}
    )
    server_app.main(None, context)  # type: ignore[arg-type]  # no round is left to send anything


def test_a_resume_that_changes_the_experiment_is_refused_naming_the_keys(
    finished_run: Path, tiny_data: object, one_thread: None
) -> None:
    overrides = tiny_data.overrides  # type: ignore[attr-defined]
    config = (finished_run / "config.yaml").read_bytes()
    with pytest.raises(ResumeRefused) as err:
        _resume(finished_run, f"{overrides} lr=0.01 num_epochs=3")
    assert "lr: 0.001 -> 0.01" in str(err.value) and "num_epochs: 2 -> 3" in str(err.value)
    assert "resume_allow_changes=[lr,num_epochs]" in str(err.value)
    cfg = OmegaConf.merge(OmegaConf.load(finished_run / "config.yaml"), {"resume": str(finished_run), "lr": 0.01})
    with pytest.raises(SystemExit, match=r"lr: 0.001 -> 0.01"):  # the CLI's check says it before Ray starts
        run_dir.prepare(finished_run, cfg)
    # allowed when listed; run length and operational keys always are; config.yaml stays the original
    _resume(finished_run, f"{overrides} lr=0.01 resume_allow_changes=[lr] verbose=true server.round_timeout=5")
    assert (finished_run / "config.yaml").read_bytes() == config
    assert (finished_run / "final.safetensors").is_file() and (finished_run / PREDICTIONS_FILE).is_file()


def test_a_full_disk_in_the_server_is_one_line_and_exit_5(
    finished_run: Path,
    tiny_data: object,
    one_thread: None,
    caplog: pytest.LogCaptureFixture,
    full_disk: Callable[[str], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    final = (finished_run / "final.safetensors").read_bytes()
    full_disk("final.safetensors")
    with caplog.at_level(logging.ERROR, "fedmemes"), pytest.raises(OSError) as raised:
        _resume(finished_run, tiny_data.overrides)  # type: ignore[attr-defined]
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"disk full writing {finished_run / 'final.safetensors'} (")
    assert (finished_run / "final.safetensors").read_bytes() == final  # the earlier file, whole
    assert checkpoint.load(finished_run).server_round == 1  # still resumable
    # Deployed, `fedmemes server` learns only Flower's status details (flwr/superlink/runtime/run_serverapp.py)
    # and ends as `fedmemes simulate` does: exit 5 and the same line, once, in its fedmemes.log
    server_dir = tmp_path / "server-run"
    details = f"ServerApp failed with exception: {raised.value}"
    monkeypatch.setattr(deploy_server, "SuperLink", failed_superlink(details))
    with pytest.raises(SystemExit) as exit_:
        cli.main(local_server_args(server_dir, 1, 2, tmp_path / "flwr", *tiny_data.overrides.split()))  # type: ignore[attr-defined]
    assert exit_.value.code == EXIT_DISK == 5
    assert (server_dir / "fedmemes.log").read_text().count(line) == 1
    assert disk_error_in("ServerApp failed with exception: [Errno 28] No space left on device: 'x'") is None


def test_a_resumed_csv_tracker_replaces_the_rows_of_rounds_it_trains_again(tmp_path: Path) -> None:
    from fedmemes.tracking.csv_logger import CsvLogger

    first = CsvLogger(tmp_path)
    for step in (0, 1, 2):  # the run stops after logging round 2, whose checkpoint was never written
        first.log_metrics(step, {"holdout/auroc": 0.5 + step / 10})
    second = CsvLogger(tmp_path)  # resumed after round 1: round 2 is trained and logged again
    second.log_metrics(2, {"holdout/auroc": 0.9})
    second.log_metrics(2, {"test/auroc": 0.8})  # the test scores at the last round's step keep its rows
    rows = (tmp_path / "tracking" / "metrics.csv").read_text().splitlines()
    assert rows == [
        "step,name,value",
        "0,holdout/auroc,0.5",
        "1,holdout/auroc,0.6",
        "2,holdout/auroc,0.9",
        "2,test/auroc,0.8",
    ]
    assert not list((tmp_path / "tracking").glob(".*"))
