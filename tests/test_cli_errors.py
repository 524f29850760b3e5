"""Every CLI argument error says what is wrong with what was given, a missing run folder first (issue 28, part 5)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedmemes import cli
from fedmemes.deploy import certs, manager, supernode
from fedmemes.tools import list_runs as runs
from fedmemes.tools import predict, serve
from fedmemes.tools.report import command as report

MISSING = "/no/such/run"
NO_RUN = f"no run folder at {MISSING}: `fedmemes runs` lists the runs under outputs/"


def _fails(main: Callable[[list[str]], None], argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a command's main; return its exit code and the one error line it printed (or exited with)."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    code = done.value.code
    if isinstance(code, str):  # SystemExit("error: ...") prints the text and exits 1
        return 1, code
    return int(code or 0), err[-1] if err else ""


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A folder that passes the run-folder check (its contents are never read: every case fails before)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    return run


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "meme.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")
    return path


def test_predict_names_the_missing_run_folder_through_the_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The case the issue quotes, through `fedmemes`' dispatch (in process: a fresh one spends 10-30 s on imports)."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # cli.main rewrites it for the command it dispatches to
    code, err = _fails(cli.main, ["predict", MISSING, "--text", "hi"], capsys)
    assert code == 2 and err.startswith(f"fedmemes predict: error: {NO_RUN}")
    assert "give exactly one of" not in err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--text", "hi"], "--text needs --image PATH too: one meme is a caption and its picture"),
        (["--image", "{image}"], "--image needs --text TEXT too: one meme is a caption and its picture"),
        ([], "nothing to score: give INPUT (a jsonl or a folder of them), --text TEXT --image PATH, or --run-split"),
        (["x.jsonl", "--run-split", "test"], "give one thing to score, not INPUT x.jsonl and --run-split test"),
        (["--text", "  ", "--image", "{image}"], "--text is empty: give the meme's caption"),
        (["--text", "hi", "--image", "/nope/meme.png"], "--image /nope/meme.png: no such file"),
        (["{tmp}/none.jsonl"], "INPUT {tmp}/none.jsonl: no such file or folder"),
    ],
)
def test_predict_says_what_is_wrong_with_what_was_given(
    argv: list[str], line: str, run_folder: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill = {"image": str(image), "tmp": str(run_folder.parent)}
    code, err = _fails(predict.main, [str(run_folder), *(a.format(**fill) for a in argv)], capsys)
    assert code == 2 and f"fedmemes predict: error: {line.format(**fill)}" in err


def test_the_run_folder_is_named_before_any_other_mistake(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Missing, a file, or a folder without config.yaml: each said as such, though the other flags are wrong too."""
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    cases = {
        MISSING: NO_RUN,
        str(afile): f"{afile} is a file, not a run folder: pass the folder that holds config.yaml",
        str(tmp_path): f"{tmp_path} is not a run folder (no config.yaml in it): `fedmemes runs {tmp_path}` lists",
    }
    for run_dir, line in cases.items():
        code, err = _fails(predict.main, [run_dir, "--image", "x.png"], capsys)
        assert code == 2 and f"fedmemes predict: error: {line}" in err


def test_serve_report_and_runs_name_the_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _fails(serve.main, [MISSING, "--host", "0.0.0.0"], capsys)  # the folder before the open host
    assert code == 2 and NO_RUN in err
    code, err = _fails(report.main, [str(tmp_path), MISSING], capsys)  # before the first folder's files are read
    assert code == 2 and NO_RUN in err
    code, err = _fails(runs.main, ["/no/such"], capsys)
    assert code == 1 and err.startswith("error: no folder at /no/such: runs live under outputs/")
    (tmp_path / "f").write_text("x")
    assert _fails(runs.main, [str(tmp_path / "f")], capsys)[1].startswith(f"error: {tmp_path / 'f'} is a file")


def test_serve_names_a_missing_token_file_and_image_root(
    run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(serve.main, [str(run_folder), "--token-file", "/nope/token"], capsys)
    assert code == 2 and "token file /nope/token: no such file; it holds one line, the shared token" in err
    code, err = _fails(serve.main, [str(run_folder), "--image-root", "/nope/images"], capsys)
    assert code == 2 and "--image-root /nope/images: no such folder" in err


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--superlink", "h:1", "--partition-id", "0"], "--partition-id 0 needs --num-partitions N too"),
        (["--superlink", "h:1", "--num-partitions", "2"], "--num-partitions 2 needs --partition-id I too"),
        (["--superlink", "h:1", "--partition-id", "2", "--num-partitions", "2"], "--partition-id 2 must be in [0, 2)"),
        (
            ["--superlink", "server", "--partition-id", "0", "--num-partitions", "2"],
            "--superlink server: give HOST:PORT",
        ),
        (
            ["--superlink", "h:1", "--partition-id", "0", "--num-partitions", "2", "--data-dir", "/nope/memes"],
            "--data-dir /nope/memes: no such folder",
        ),
        (
            ["--superlink", "h:1", "--partition-id", "0", "--num-partitions", "2", "--root-certificates", "/no/ca.crt"],
            "--root-certificates /no/ca.crt: no such file; copy the server's ca.crt to this machine",
        ),
        (
            ["--superlink", "h:1", "--partition-id", "0", "--num-partitions", "2", "--auth-key", "/no/a.key"],
            "--auth-key /no/a.key: no such file; make it here with `fedmemes certs DIR --node-key NAME`",
        ),
    ],
)
def test_client_and_manager_name_the_flag_and_the_fix(
    argv: list[str], line: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _fails(supernode.main, argv, capsys)
    assert code == 2 and f"fedmemes client: error: {line}" in err
    monkeypatch.setenv("FEDMEMES_TOKEN", "t")
    code, err = _fails(manager.main, ["--name", "a", *argv], capsys)  # the same check before the API starts
    assert code == 2 and line in err


def test_certs_and_data_commands_name_the_bad_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "f"
    afile.write_text("x")
    assert _fails(certs.main, [str(afile)], capsys) == (
        2,
        f"fedmemes certs: error: {afile} is a file, not a folder: DIR is the folder the keys and certificates go into",
    )
    code, err = _fails(certs.main, [str(tmp_path), "--nodes", "-1"], capsys)
    assert code == 2 and "--nodes -1: give how many node key pairs to make, 0 or more" in err
    assert not (tmp_path / "ca.crt").exists()  # refused before anything is written
    code, err = _fails(cli.main, ["data", "inspect", "dataset=hateful_memes"], capsys)
    assert (code, err) == (
        2,
        "error: dataset.root has no value and dataset=hateful_memes needs one: "
        "add dataset.root=/abs/folder to the command",
    )


def test_resume_of_a_missing_folder_is_named_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone" / "run"
    code, err = _fails(cli.main, ["simulate", f"resume={gone}"], capsys)
    assert code == 2 and err.startswith(f"error: no run folder at {gone}: ") and err.endswith(f"(resume={gone})")
    assert not (tmp_path / "gone").exists()  # Hydra never made the folder it was asked to resume


def test_a_missing_dataset_root_is_named_as_a_missing_folder(tmp_path: Path) -> None:
    """`dataset.root=/typo`: the folder is missing, not its train.jsonl."""
    from fedmemes.data.local_dir import LocalDirSource

    with pytest.raises(FileNotFoundError, match=rf"^no folder at {tmp_path / 'typo'} \(dataset.root\): point it at"):
        LocalDirSource(tmp_path / "typo").load()
    with pytest.raises(FileNotFoundError, match="missing train.jsonl"):  # an existing folder: what it lacks
        LocalDirSource(tmp_path).load()
