"""`fedmemes predict`: the run's model rebuilt from its directory reproduces the server's test scores; bad rows are
skipped."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from fedmemes.federation import engine
from fedmemes.tools.predict import load_run, main
from fedmemes.tools.predict_inputs import read_jsonl, run_split


@pytest.fixture(scope="module")
def run_dir(tiny_run: Path, one_thread: None) -> Path:
    """The shared finished tiny run (conftest), scored on one torch thread."""
    return tiny_run


def _read(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with path.open() as f:
            return list(csv.DictReader(f))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pick_threshold_maximises_macro_f1_and_falls_back_to_half():
    prob = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7])
    label = np.array([0, 0, 1, 1, 1, 1])
    t = engine.pick_threshold(prob, label)
    assert 0.2 < t < 0.3  # the only cut that separates the classes: macro-F1 1.0
    assert engine.metrics_at(prob, label, t)["f1_macro"] == 1.0
    assert engine.metrics_at(prob, label, 0.5)["f1_macro"] < 1.0
    assert engine.pick_threshold(prob, np.ones(6, dtype=int)) == 0.5  # one class: nothing to pick
    scores = engine.threshold_metrics(prob, label, 0.3, t)
    assert scores["accuracy"] == 1.0 and scores["accuracy_at_0.5"] == pytest.approx(4 / 6) and scores["threshold"] == t


def test_server_picks_the_threshold_on_dev_and_reports_test_at_it_and_at_half(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]
    run = load_run(run_dir)
    dev = run_split(run.cfg, "dev")
    dev_prob = run.score(dev.memes)
    dev_label = np.array([m.label for m in dev.memes])
    picked, anchor = engine.pick_threshold(dev_prob, dev_label), engine.rate_threshold(dev_prob, dev_label)
    assert test["threshold_dev"] == pytest.approx(picked, abs=1e-6)
    # server.threshold_prior=200 pulls the pick toward the rate-matching threshold by the dev split's size
    weight = len(dev.memes) / (len(dev.memes) + run.cfg.server.threshold_prior)
    assert test["threshold"] == pytest.approx(anchor + weight * (picked - anchor), abs=1e-6)
    assert min(picked, anchor) - 1e-9 <= test["threshold"] <= max(picked, anchor) + 1e-9
    assert run.threshold == pytest.approx(test["threshold"])
    tst = run_split(run.cfg, "test")
    prob, label = run.score(tst.memes), np.array([m.label for m in tst.memes])
    assert test["accuracy"] == pytest.approx(engine.metrics_at(prob, label, test["threshold"])["accuracy"], abs=1e-9)
    assert test["accuracy_at_0.5"] == pytest.approx(engine.metrics_at(prob, label, 0.5)["accuracy"], abs=1e-9)
    assert test["auroc"] > 0.7  # the tiny run learned the caption-image pairs


def test_predict_on_the_runs_test_split_reproduces_metrics_json(run_dir, tiny_data, tmp_path, capsys):
    expected = json.loads((run_dir / "metrics.json").read_text())["test"]
    out = tmp_path / "split.jsonl"
    main([str(run_dir), "--run-split", "test", "--out", str(out)])
    rows = _read(out)
    assert len(rows) == expected["n"]
    assert abs(roc_auc_score([r["label"] for r in rows], [r["p_hateful"] for r in rows]) - expected["auroc"]) < 1e-3
    printed = capsys.readouterr().out
    assert f"AUROC {expected['auroc']:.4f}" in printed and f"threshold {expected['threshold']:.3f}" in printed

    # The same memes from the generator's test_seen.jsonl in the original layout, written as CSV.
    csv_out = tmp_path / "file.csv"
    main([str(run_dir), str(tiny_data.folder / "test_seen.jsonl"), "--out", str(csv_out)])
    by_file = _read(csv_out)
    assert [r["id"] for r in by_file] == [r["id"] for r in rows]
    assert (
        abs(
            roc_auc_score([int(r["label"]) for r in by_file], [float(r["p_hateful"]) for r in by_file])
            - expected["auroc"]
        )
        < 1e-3
    )
    assert all(int(r["pred"]) == int(float(r["p_hateful"]) > expected["threshold"]) for r in by_file)


def test_bad_rows_are_reported_with_their_line_and_skipped_never_scored(run_dir, tiny_data, tmp_path, capsys):
    data = tiny_data.folder
    good = [json.loads(line) for line in (data / "test_seen.jsonl").read_text().splitlines()[:4]]
    (tmp_path / "img").mkdir()
    for row in good:
        shutil.copy(data / row["img"], tmp_path / row["img"])
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image at all")
    unlabelled = {k: v for k, v in good[3].items() if k != "label"}
    lines = [
        json.dumps(good[0]),
        "{not json",
        json.dumps({**good[1], "label": "yes"}),
        json.dumps({**good[2], "id": 777, "img": "img/missing.png"}),
        json.dumps({**good[2], "id": 778, "img": "img/broken.png"}),
        json.dumps(good[2]),
        json.dumps(unlabelled),
        json.dumps({**good[0], "text": "dup"}),
        json.dumps({**good[2], "img": "../x.png", "id": 5}),
    ]
    src = tmp_path / "new.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.jsonl"
    main([str(run_dir), str(src), "--out", str(out)])
    err = capsys.readouterr().err
    for line, kind in [
        (2, "bad_json"),
        (3, "bad_label"),
        (4, "missing_image"),
        (5, "unreadable_image"),
        (8, "duplicate_id"),
        (9, "bad_img"),
    ]:
        assert f"{src}:{line}: {kind}" in err
    rows = _read(out)
    assert [str(r["id"]) for r in rows] == [str(good[0]["id"]), str(good[2]["id"]), str(good[3]["id"])]
    assert rows[2]["label"] is None and rows[0]["label"] == good[0]["label"]
    assert all(0.0 < r["p_hateful"] < 1.0 for r in rows)

    with pytest.raises(SystemExit, match="data issue"):
        main([str(run_dir), str(src), "--on-error", "raise", "--out", str(out)])


def test_single_meme_and_folder_inputs_score_like_the_batch(run_dir, tiny_data, tmp_path, capsys):
    data = tiny_data.folder
    folder = tmp_path / "memes"  # the original layout without train.jsonl
    folder.mkdir()
    (folder / "img").symlink_to(data / "img")
    for split in ("dev_seen", "test_seen"):
        (folder / f"{split}.jsonl").symlink_to(data / f"{split}.jsonl")
    batch = tmp_path / "all.jsonl"
    main([str(run_dir), str(folder), "--out", str(batch)])  # the folder: every split file, with a split column
    rows = _read(batch)
    assert {r["split"] for r in rows} == {"dev_seen", "test_seen"} and len(rows) == 120
    printed = capsys.readouterr().out
    assert "dev_seen: n=60" in printed and "test_seen: n=60" in printed
    first = json.loads((data / "test_seen.jsonl").read_text().splitlines()[0])
    main([str(run_dir), "--text", first["text"], "--image", str(data / first["img"]), "--threshold", "0.5"])
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = next(r for r in rows if r["split"] == "test_seen" and str(r["id"]) == str(first["id"]))
    assert single["p_hateful"] == pytest.approx(expected["p_hateful"], abs=1e-4)
    assert single["pred"] == int(single["p_hateful"] > 0.5) and "label" not in single


def test_errors_name_the_fix(run_dir, tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse: a folder that is not a run folder, named before anything loads
        main([str(tmp_path), "--run-split", "test"])
    assert f"{tmp_path} is not a run folder (no config.yaml in it)" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the --out extension picks the format
        main([str(run_dir), "--run-split", "test", "--out", str(tmp_path / "x.txt")])
    assert "extension picks the format" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: INPUT and --text together
        main([str(run_dir), "in.jsonl", "--text", "hi"])
    assert "give one thing to score, not INPUT in.jsonl and --text/--image" in capsys.readouterr().err
    final = load_run(run_dir, "final")
    assert final.which == "final" and read_jsonl(tiny_data.folder / "dev_seen.jsonl").issues == []


@pytest.mark.slow
def test_predict_after_a_real_simulation_matches_its_test_auroc(simulated_run, tmp_path):
    run = simulated_run.run_dir  # the session's `fedmemes simulate` (conftest); predict writes under tmp_path only

    def cli(*args: str, timeout: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedmemes.cli", *args],
            env=simulated_run.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    files = sorted(p.name for p in run.iterdir())
    test = json.loads((run / "metrics.json").read_text())["test"]
    data = instantiate(OmegaConf.load(run / "config.yaml").dataset.source).folder  # the memes the run was made on
    out = cli("predict", str(run), str(data / "test_seen.jsonl"), "--out", str(tmp_path / "p.csv"), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = _read(tmp_path / "p.csv")
    assert len(rows) == test["n"] == 80
    assert (
        abs(roc_auc_score([int(r["label"]) for r in rows], [float(r["p_hateful"]) for r in rows]) - test["auroc"])
        < 1e-3
    )
    listed = cli("runs", str(run.parent), timeout=120)
    assert "finished" in listed.stdout and f"{test['auroc']:.3f}" in listed.stdout
    assert sorted(p.name for p in run.iterdir()) == files  # the shared run is read, never written
