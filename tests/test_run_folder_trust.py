"""A run folder is data: a config.yaml naming code is refused (predict, serve, report, resume=) before anything is
built; every file a run writes is 0600."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from PIL import Image

from fedmemes import cli
from fedmemes.bookkeeping import run_config
from fedmemes.bookkeeping.run_dir import prepare
from fedmemes.tools.predict import load_run

KEEP = b"precious bytes\n"


@pytest.fixture
def trap(tmp_path: Path) -> dict[str, Path]:
    """A file an attack would truncate, the marker an attack would create, a module that marks its import."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(KEEP)
    evil = tmp_path / "evil_pkg"
    evil.mkdir()
    (evil / "evilmod.py").write_text(f"from pathlib import Path\nPath({str(tmp_path / 'IMPORTED')!r}).touch()\n")
    return {"victim": victim, "marker": tmp_path / "MARKER", "imported": tmp_path / "IMPORTED", "evil": evil}


def _attacks(trap: dict[str, Path]) -> dict[str, tuple[str, object]]:
    """Name -> (key set in config.yaml, its value): each would run code on whoever builds the run's model."""
    touch = f"__import__('pathlib').Path({str(trap['marker'])!r}).touch()"
    return {
        "open": ("model.text_encoder", {"_target_": "builtins.open", "file": str(trap["victim"]), "mode": "w"}),
        "eval": ("model.text_encoder", {"_target_": "builtins.eval", "_args_": [touch]}),
        "args_on_own_class": ("model._args_", [touch]),
        "resolver": ("image_size", f"${{touch_marker:{trap['marker']}}}"),
        "env": ("cache_dir", "${oc.env:HOME}"),
        "foreign_module": ("model.image_encoder._target_", "evilmod.Thing"),
        "attribute_of_own_module": ("model._target_", "fedmemes.models.base.torch.save"),
        "loss": ("loss._target_", "builtins.exec"),
        "strategy": ("server.strategy._target_", "os.system"),
    }


def _tampered(src: Path, dst: Path, key: str, value: object) -> Path:
    """Copy a finished run folder and set `key` in its config.yaml (as a hand-edited file would)."""
    shutil.copytree(src, dst)
    config = yaml.safe_load((dst / "config.yaml").read_text())
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = value
    (dst / "config.yaml").write_text(yaml.safe_dump(config))
    return dst


@pytest.fixture
def resolver_trap(trap: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A custom resolver that marks its use, and evilmod importable: an attack has them at hand."""
    OmegaConf.register_new_resolver("touch_marker", lambda p: Path(p).touch() or 64, replace=True)
    monkeypatch.syspath_prepend(str(trap["evil"]))


def _untouched(trap: dict[str, Path]) -> None:
    assert trap["victim"].read_bytes() == KEEP
    assert not trap["marker"].exists()
    assert not trap["imported"].exists()
    assert "evilmod" not in sys.modules


def _exit_message(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "argv", ["fedmemes", *argv])  # cli.main rewrites sys.argv; restored after the test
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code not in (0, None)
    return str(exc.value.code)


@pytest.mark.parametrize(
    "attack",
    [
        "open",
        "eval",
        "args_on_own_class",
        "resolver",
        "env",
        "foreign_module",
        "attribute_of_own_module",
        "loss",
        "strategy",
    ],
)
def test_predict_serve_and_report_refuse_a_config_naming_code(
    attack, tiny_run, trap, resolver_trap, tmp_path, monkeypatch
):
    key, value = _attacks(trap)[attack]
    folder = _tampered(tiny_run, tmp_path / "run", key, value)
    for argv in (
        ["predict", str(folder), "--run-split", "test", "--out", str(tmp_path / "p.jsonl")],
        ["serve", str(folder), "--port", "1"],
        ["report", str(folder), "--out", str(tmp_path / "report")],
    ):
        message = _exit_message(argv, monkeypatch)
        assert message.startswith(f"error: {folder / 'config.yaml'}: {key.split('._target_')[0]}"), message
        assert "a run folder is data" in message and "\n" not in message
    _untouched(trap)
    assert not (tmp_path / "p.jsonl").exists() and not (tmp_path / "report").exists()


def test_the_refusal_names_file_key_and_what_is_allowed(tiny_run, trap, tmp_path):
    folder = _tampered(tiny_run, tmp_path / "run", *_attacks(trap)["open"])
    with pytest.raises(run_config.RunConfigError) as exc:
        load_run(folder)
    assert str(exc.value).startswith(
        f"{folder}/config.yaml: model.text_encoder._target_=builtins.open is not a fedmemes model or encoder class; "
        "a run folder is data"
    )
    _untouched(trap)


def test_a_shell_run_of_predict_exits_non_zero_and_runs_nothing(tiny_run, trap, tmp_path):
    folder = _tampered(tiny_run, tmp_path / "run", *_attacks(trap)["eval"])
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)  # a valid argument list: only the run folder is wrong
    out = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "predict", str(folder), "--text", "hi", "--image", str(image)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "model.text_encoder._target_=builtins.eval is not a fedmemes model or encoder class" in out.stderr
    _untouched(trap)


def test_resume_refuses_such_a_folder_before_any_client_trains(small_config, tiny_run, trap, tmp_path):
    folder = _tampered(tiny_run, tmp_path / "run", *_attacks(trap)["eval"])
    with pytest.raises(SystemExit) as exc:
        prepare(folder, small_config(f"resume={folder}"))
    assert "model.text_encoder._target_=builtins.eval" in str(exc.value.code)
    _untouched(trap)


def test_resume_never_composes_overrides_read_from_recipes_json(small_config, tmp_path):
    from fedmemes.federation.server_app import _choose_recipe

    (tmp_path / "recipes.json").write_text(
        json.dumps({"chosen": "a", "overrides": "model.text_encoder._target_=builtins.eval"})
    )
    cfg = small_config("\"server.recipes={a:'lr=0.01'}\"")
    with pytest.raises(run_config.RunConfigError, match=r"recipes.json: chosen=a .* not one of this run's"):
        _choose_recipe(None, cfg, "", tmp_path)  # type: ignore[arg-type]  # refused before the grid is used
    mine = {"chosen": "a", "overrides": "lr=0.01"}  # what this run's own server.recipes says: kept on resume
    (tmp_path / "recipes.json").write_text(json.dumps(mine))
    assert _choose_recipe(None, cfg, "", tmp_path) == mine  # type: ignore[arg-type]


def test_run_folders_written_today_and_before_a_move_still_load(tiny_run, tmp_path):
    config = run_config.read(tiny_run)
    assert config["model"]["_target_"].startswith("fedmemes.models.")
    assert config["optimizer"]["_partial_"] is True  # the one Hydra flag fedmemes writes
    assert "${" not in (tiny_run / "config.yaml").read_text()  # written resolved
    old = _tampered(
        tiny_run,
        tmp_path / "old",
        "model.text_encoder._target_",
        "fedmemes.models.text_encoder.FrozenTextEncoder",  # the path before the models/components move
    )
    run = load_run(old)
    assert run.cfg.model.text_encoder._target_ == "fedmemes.models.components.text_encoder.FrozenTextEncoder"


RUN_FILES = ("checkpoint.pt", "metrics.json", "config.yaml", "best.safetensors", "final.safetensors")


def test_every_file_of_a_run_is_created_owner_only(tiny_run):
    written = [p for p in tiny_run.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {*RUN_FILES, "test_predictions.csv", "report.html", "report.md"}
    modes = {str(p.relative_to(tiny_run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert set(modes.values()) == {"0o600"}, modes
    assert not [p for p in tiny_run.rglob(".*.tmp")]  # no temporary left behind


def test_a_report_written_elsewhere_keeps_the_usual_mode(tiny_run, tmp_path):
    from fedmemes.tools.report import write_report

    html, _ = write_report([tiny_run], tmp_path / "share")
    assert stat.S_IMODE(html.stat().st_mode) & 0o044  # --out: made to be shared (umask 022 here)


@pytest.mark.slow
def test_a_simulated_run_folder_is_owner_only_hydra_files_and_log_included(simulated_run):
    run_dir = simulated_run.run_dir
    written = {str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*") if p.is_file()}
    assert {".hydra/config.yaml", "fedmemes.log", *RUN_FILES} <= set(written)
    assert {k: oct(v) for k, v in written.items() if v != 0o600} == {}
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700  # Hydra made the folder under PrivateHydraFiles' umask
