"""`fedmemes report`: figures from a run's files, one self-contained HTML, markdown with PNGs, config differences."""

import base64
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from fedmemes.tools.report import load_run, save_test_predictions, write_report
from fedmemes.tools.report.command import main as report_main


def _fake_run(path, lr, aurocs, dropped, seed):
    """A run directory as the ServerApp leaves it: metrics.json, config.yaml, test_predictions.csv."""
    path.mkdir(parents=True)
    rounds = [
        {
            "round": i,
            "auroc": a,
            "accuracy": 0.5 + a / 4,
            "loss": 1 - a / 2,
            "n": 80,
            "clients": 2 if i else 0,
            **({"replies": 3, "dropped_replies": d, "kept_previous_model": 0} if i else {}),
        }
        for i, (a, d) in enumerate(zip(aurocs, dropped, strict=True))
    ]
    clients = [
        {"partition_id": 0, "n_train": 300, "label_counts": [200, 100], "n_text": 300, "n_image": 150, "n_both": 150},
        {"partition_id": 1, "n_train": 240, "label_counts": [60, 180], "n_text": 100, "n_image": 240, "n_both": 100},
    ]
    best = int(np.argmax(aurocs))
    (path / "metrics.json").write_text(
        json.dumps(
            {
                "rounds": rounds,
                "best_round": best,
                "clients": clients,
                "test": {"auroc": 0.9, "accuracy": 0.8, "f1_macro": 0.79, "n": 200},
            }
        )
    )
    cache = f"/caches/{seed}"  # each run on its own cache: paths under it are no experiment choice
    (path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "lr": lr,
                "num_rounds": len(aurocs) - 1,
                "run_dir": str(path),
                "cache_dir": cache,
                "dataset": {"root": f"{cache}/data"},
                "model": {"_target_": "fedmemes.models.early_fusion.EarlyFusion"},
            }
        )
    )
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, 200)
    prob = np.clip(0.5 * label + rng.uniform(0, 0.6, 200), 0, 1)  # informative but not perfect
    save_test_predictions(path, prob, label)
    return prob, label


def test_predictions_round_trip_through_the_run_dir(tmp_path):
    prob, label = _fake_run(tmp_path / "a", 0.001, [0.5, 0.7], [0, 1], seed=0)
    run = load_run(tmp_path / "a")
    assert np.allclose(run.prob, prob, atol=1e-5) and (run.label == label).all()
    assert run.threshold == 0.5  # no threshold stored: 0.5
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics["test"]["threshold"] = 0.37  # picked on the hold-out by the server
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics))
    assert load_run(tmp_path / "a").threshold == 0.37


def test_report_of_two_runs_has_every_figure_inline_and_the_config_difference(tmp_path):
    _fake_run(tmp_path / "a", 0.001, [0.5, 0.62, 0.71, 0.69], [0, 0, 1, 0], seed=0)
    _fake_run(tmp_path / "b", 0.003, [0.5, 0.58, 0.66, 0.74], [0, 0, 0, 2], seed=1)
    html_path, md_path = write_report([tmp_path / "a", tmp_path / "b"])
    assert html_path == tmp_path / "a" / "report.html" and md_path == tmp_path / "a" / "report.md"

    pngs = sorted(p.name for p in (tmp_path / "a" / "report").glob("*.png"))
    assert pngs == [
        "clients_0.png",
        "clients_1.png",
        "confusion.png",
        "holdout.png",
        "participation.png",
        "test_curves.png",
    ]
    for name in pngs:  # real images of a readable size
        width, height = Image.open(tmp_path / "a" / "report" / name).size
        assert width >= 600 and height >= 250, (name, width, height)

    page = html_path.read_text()
    inline = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(inline) == len(pngs)  # one file: every figure inline, nothing fetched
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in inline)
    assert "src='report/" not in page and "http" not in page.split("<body>")[1].split("<details>")[0]
    # config differences: lr differs, num_rounds does not, run_dir is no experiment choice
    table = page.split("Keys whose values differ")[1].split("</table>")[0]
    assert '<td class="">lr</td>' in table and "0.001" in table and "0.003" in table
    assert "num_rounds" not in table and "run_dir" not in table and "dataset.root" not in table
    # summary: best hold-out AUROC of each run and test AUROC
    assert "0.710" in page and "0.740" in page and "0.900" in page

    markdown = md_path.read_text()
    linked = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", markdown)
    assert sorted(p.split("/")[1] for p in linked) == pngs
    assert "| lr | 0.001 | 0.003 |" in markdown


def test_report_without_test_predictions_still_draws_the_rest(tmp_path):
    _fake_run(tmp_path / "old", 0.001, [0.5, 0.6], [0, 0], seed=0)
    (tmp_path / "old" / "test_predictions.csv").unlink()  # a run made before fedmemes saved them
    out = tmp_path / "out"
    report_main([str(tmp_path / "old"), "--out", str(out)])
    assert (out / "report.html").is_file() and (out / "report" / "holdout.png").is_file()
    assert not (out / "report" / "test_curves.png").exists()
    assert "No run saved test_predictions.csv" in (out / "report.html").read_text()


def test_report_names_the_missing_file_and_the_fix(tmp_path):
    with pytest.raises(SystemExit, match=r"metrics.json: no such file; pass a run directory"):
        report_main([str(tmp_path)])


def test_a_thousand_clients_draw_a_readable_width_not_one_bar_label_each(tmp_path):
    _fake_run(tmp_path / "big", 0.001, [0.5, 0.6], [0, 0], seed=0)
    metrics = json.loads((tmp_path / "big" / "metrics.json").read_text())
    client = {"n_train": 2, "label_counts": [1, 1], "n_text": 2, "n_image": 2, "n_both": 2}
    metrics["clients"] = [{"partition_id": i, **client} for i in range(1000)]
    (tmp_path / "big" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "out"
    report_main([str(tmp_path / "big"), "--out", str(out)])
    width, height = Image.open(out / "report" / "clients_0.png").size
    assert 1000 < width <= 24 * 110 and height < 600  # was 99,550 px wide for 1,000 clients


def test_a_recipe_search_and_an_early_stop_are_shown(tmp_path):
    _fake_run(tmp_path / "searched", 0.001, [0.5, 0.7, 0.72, 0.69], [0, 0, 0, 0], seed=0)
    metrics = json.loads((tmp_path / "searched" / "metrics.json").read_text())
    trials = {
        "finetune": {
            "overrides": "model/text_encoder=finetune_ngrams lr=1e-4",
            "holdout_auroc": [0.66, 0.7],
            "best": 0.7,
        },
        "frozen": {
            "overrides": "model/text_encoder=frozen_ngrams lr=1e-3",
            "holdout_auroc": [0.68, None],
            "best": 0.68,
        },
    }
    metrics.update(stopped_early=3, recipes={"trial_rounds": 2, "candidates": trials, "chosen": "finetune"})
    (tmp_path / "searched" / "metrics.json").write_text(json.dumps(metrics))
    _, md = write_report([tmp_path / "searched"], tmp_path / "out")
    text = md.read_text()
    assert "| searched | finetune | model/text_encoder=finetune_ngrams lr=1e-4 | 0.660 0.700 | 0.700 | chosen |" in text
    assert "| searched | frozen | model/text_encoder=frozen_ngrams lr=1e-3 | 0.680 n/a | 0.680 |  |" in text
    assert "searched stopped after round 3 (server.patience)" in text
