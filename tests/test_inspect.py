"""`fedmemes data inspect` and the split facts a simulation records: table, clients.json, clients.png."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fedmemes.bookkeeping.history import RunHistory
from fedmemes.config import load_config
from fedmemes.data.report import format_table, read_client_facts, write_report
from fedmemes.federation.node_datasets import data_issues, split_facts


def _folder(root: Path, n: int = 60, broken: bool = False) -> Path:
    """A folder in the original layout: n train rows (1 in 3 hateful), 10 dev and test rows."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (40, 90, 200)).save(root / "img" / "a.png")
    lines = {
        "train": [
            json.dumps({"id": i, "img": "img/a.png", "label": int(i % 3 == 0), "text": f"t {i}"}) for i in range(n)
        ],
        "dev_seen": [json.dumps({"id": 500 + i, "img": "img/a.png", "label": i % 2, "text": "d"}) for i in range(10)],
        "test_seen": [json.dumps({"id": 600 + i, "img": "img/a.png", "label": i % 2, "text": "e"}) for i in range(10)],
    }
    if broken:
        lines["train"][1] = '{"id": 1, "img": '
        lines["train"][4] = json.dumps({"id": 4, "img": "img/gone.png", "label": 0, "text": "x"})
    for split, rows in lines.items():
        (root / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return root


def test_split_facts_count_labels_and_modalities(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    cfg = load_config(
        f"dataset=hateful_memes dataset.root={root} partition=stratified num_clients=3 "
        "partition.text_only_clients=1 partition.label_noise=[0,0,0.5] local_val_share=0"
    )
    facts = split_facts(cfg)
    assert [f["n_train"] for f in facts] == [20, 20, 20]
    assert [f["modality"] for f in facts].count("text_only") == 1
    for f in facts:
        assert sum(f["label_counts"]) == f["n_train"]
        if f["modality"] == "text_only":
            assert f["n_image"] == 0 and f["n_both"] == 0 and f["n_text"] == 20
        else:
            assert f["n_image"] == f["n_text"] == f["n_both"] == 20
    assert facts[0]["label_counts"] in ([13, 7], [14, 6])  # stratified: a third hateful, no noise
    assert facts[2]["n_flipped"] > 3 and facts[0]["n_flipped"] == 0
    assert split_facts(cfg) == facts  # seeded: inspect and simulate agree
    assert data_issues(cfg) == {}


def test_report_files_and_table(tmp_path: Path) -> None:
    facts = [
        {
            "partition_id": i,
            "n_train": 10,
            "n_val": 1,
            "label_counts": [10 - i, i],
            "n_text": 10,
            "n_image": 10 - i,
            "n_both": 10 - i,
            "modality": "both",
            "label_noise": 0.0,
            "n_flipped": 0,
            "n_dropped": 0,
        }
        for i in range(3)
    ]
    json_path, png_path = write_report(facts, tmp_path / "run", {"bad_json": 2})
    assert json.loads(json_path.read_text()) == {"clients": facts, "data_issues": {"bad_json": 2}}
    assert read_client_facts(tmp_path / "run") == facts and read_client_facts(tmp_path) == []
    with Image.open(png_path) as img:
        assert img.format == "PNG" and img.width > 300 and img.height > 200
    table = format_table(facts, {"bad_json": 2})
    assert "    2     10     1       8       2  20.0%" in table and "data issues: bad_json=2" in table
    assert table.splitlines()[-2].split()[:5] == ["total", "30", "3", "27", "3"]


def test_history_keeps_split_facts_when_clients_report() -> None:
    history = RunHistory(Path("/unused"))
    history.add_client(0, {"n_train": 10, "n_text": 10, "modality": "text_only"})
    history.add_client(0, {"n_train": 10, "label_counts": [4, 6]})
    history.data_issues = {"missing_image": 3}
    out = history.as_dict()
    assert out["clients"] == [
        {"partition_id": 0, "n_train": 10, "n_text": 10, "modality": "text_only", "label_counts": [4, 6]}
    ]
    assert out["data_issues"] == {"missing_image": 3}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # The child inherits FEDMEMES_CACHE, the session cache (conftest).
    return subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_data_inspect_stops_on_a_broken_folder_naming_file_and_line(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", broken=True)
    out = _cli(
        "data",
        "inspect",
        "dataset=hateful_memes",
        f"dataset.root={root}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert f"{root / 'train.jsonl'}:2: bad_json" in text and f"{root / 'train.jsonl'}:5: missing_image" in text
    assert "bad_json=1" in text and "dataset.on_error=skip" in text and "Traceback" not in text


def test_check_data_with_skip_records_issue_counts(tmp_path: Path) -> None:
    from fedmemes.bookkeeping.run_steps import check_data

    root = _folder(tmp_path / "d", broken=True)
    cfg = load_config(f"dataset=hateful_memes dataset.root={root} dataset.on_error=skip")
    table = check_data(cfg, tmp_path / "run")
    assert "data issues: bad_json=1, missing_image=1" in table
    assert json.loads((tmp_path / "run" / "clients.json").read_text())["data_issues"] == {
        "bad_json": 1,
        "missing_image": 1,
    }
    assert sum(f["n_train"] + f["n_val"] for f in read_client_facts(tmp_path / "run")) == 58
    assert (tmp_path / "run" / "clients.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match=r"train.jsonl:2: bad_json"):
        check_data(load_config(f"dataset=hateful_memes dataset.root={root}"), tmp_path / "run2")
