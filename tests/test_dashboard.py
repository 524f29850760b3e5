"""The live dashboard: served at `/` by the status API, opt-in for simulations, and checked in headless Chromium."""

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from fedmemes.deploy.simulation_status import SimulationStatus
from fedmemes.deploy.status_api import RunStatus, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_page_script_and_run_summary_are_served_without_paths(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "num_rounds: 7\nnum_clients: 3\nmodel: {_target_: fedmemes.models.EarlyFusion}\n"
        "server: {strategy: {_target_: flwr.serverapp.strategy.FedAvg}}\n"
    )
    api = TestClient(create_app(RunStatus(tmp_path, 10), "token"))
    page = api.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert all(
        f'id="{i}"' in page.text
        for i in ("state", "round", "auroc-chart", "rounds-table", "clients-table", "dropped-total")
    )
    assert '<script src="dashboard.js">' in page.text and "http" not in page.text.split("<body>")[1].replace(
        "X-Fedmemes", ""
    )
    script = api.get("/dashboard.js")
    assert (
        script.status_code == 200 and "javascript" in script.headers["content-type"] and 'fetch("status"' in script.text
    )
    summary = api.get("/dashboard/run").json()
    assert summary == {
        "num_rounds": 7,
        "num_clients": 3,
        "model": "EarlyFusion",
        "strategy": "FedAvg",
        "partition": None,
    }
    assert str(tmp_path) not in json.dumps(summary)


def _cfg(port):
    return OmegaConf.create(
        {
            "server": {"status_port": port, "status_host": "127.0.0.1", "heartbeat_s": 10, "token_file": None},
            "simulation": {"status_linger_s": 0},
        }
    )


def test_simulation_serves_the_dashboard_only_when_the_port_is_asked_for(tmp_path):
    assert SimulationStatus(_cfg(8090), tmp_path, ["num_rounds=2"]).api is None  # the default 8090 is the server's
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(
            SystemExit, match=rf"server.status_port={port}: 127.0.0.1:{port} is in use; pick a free port"
        ):
            SimulationStatus(_cfg(port), tmp_path, [f"server.status_port={port}"])


def _chromium(url: str, *flags: str) -> str:
    out = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            *flags,
            url,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _rows(dom: str) -> dict[int, str]:
    """Return {round: AUROC text} from the rendered rounds table."""
    return {
        int(r): a for r, a in re.findall(r'<tr data-round="(\d+)"[^>]*><td>\d+</td><td class="auroc">([^<]*)</td>', dom)
    }


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs the Debian package chromium (.ci/run installs it)")
def test_dashboard_in_headless_chromium_follows_a_live_simulation(tmp_path):
    run_dir, port = tmp_path / "run", _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = dict(os.environ)  # FEDMEMES_CACHE: the session cache (conftest)
    log = (tmp_path / "simulate.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedmemes.cli",
            "simulate",
            "debug=tiny",
            "num_rounds=2",
            f"server.status_port={port}",
            "simulation.status_linger_s=300",
            "logger=[csv,tensorboard,mlflow]",
            f"hydra.run.dir={run_dir}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        status, mid_dom, deadline = {}, None, time.monotonic() + 900
        while not status.get("state", "").startswith("finished"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "simulate.log").read_text()[-3000:]
            try:
                status = httpx.get(url + "status", timeout=5).json()
            except httpx.HTTPError:
                status = {}
            if mid_dom is None and any(r["round"] >= 1 for r in status.get("rounds", [])):
                mid_dom = _chromium(url, "--dump-dom")  # while the federation still trains
            time.sleep(1)
        assert status["state"] == "finished:completed"
        if mid_dom is not None:  # the page showed a trained round during the run
            assert any(r >= 1 for r in _rows(mid_dom)), mid_dom[-2000:]
        dom = _chromium(url, "--dump-dom")
        _chromium(url, "--window-size=1200,1000", f"--screenshot={tmp_path / 'dashboard.png'}")
    finally:
        proc.send_signal(signal.SIGTERM)  # it lingers to keep the page up; everything it writes is written by now
        proc.wait(timeout=60)
        log.close()

    metrics = json.loads((run_dir / "metrics.json").read_text())
    shown = _rows(dom)
    assert shown == {r["round"]: f"{r['auroc']:.3f}" for r in metrics["rounds"]} and sorted(shown) == [0, 1, 2]
    assert re.search(r'id="state"[^>]*>finished:completed<', dom) and re.search(r'id="round">2<', dom)
    assert len(re.findall(r"<circle [^>]*data-round=", dom)) == 3  # one point per scored round on the AUROC curve
    assert re.search(r'id="num-rounds">\s*/\s*2<', dom)
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000

    # The run wrote its report, test predictions and the trackers' records on its own.
    rows = list(csv.DictReader((run_dir / "test_predictions.csv").open()))
    auroc = roc_auc_score([int(r["label"]) for r in rows], [float(r["p_hateful"]) for r in rows])
    assert abs(auroc - metrics["test"]["auroc"]) < 1e-6 and len(rows) == metrics["test"]["n"]
    assert (run_dir / "report.html").stat().st_size > 50_000 and (run_dir / "report" / "test_curves.png").is_file()
    tracked = [r for r in csv.DictReader((run_dir / "tracking" / "metrics.csv").open()) if r["name"] == "holdout/auroc"]
    assert [(int(r["step"]), round(float(r["value"]), 6)) for r in tracked] == [
        (r["round"], round(r["auroc"], 6)) for r in metrics["rounds"]
    ]
    assert list((run_dir / "tracking" / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "tracking" / "mlflow.db").is_file()
