"""Real separate processes on 127.0.0.1: `fedmemes server` (SuperLink + ServerApp) with TLS, two managers that
start their SuperNodes on request and heartbeat to the status API; the run directory matches a simulation's."""

import json
import os
from pathlib import Path

import pytest
from deploy_helpers import http, kill, ports, spawn, until

from fedmemes.deploy.certs import make_tls
from fedmemes.deploy.processes import wait_for_port

pytestmark = pytest.mark.slow
TOKEN = "test-token-123"
# What `fedmemes simulate` leaves in a run directory.
RUN_FILES = {
    ".hydra",
    "best.safetensors",
    "checkpoint.pt",
    "clients.json",
    "clients.png",
    "config.yaml",
    "fedmemes.log",
    "final.safetensors",
    "metrics.json",
    "test_predictions.csv",
    "report",
    "report.html",
    "report.md",
}


_ports, _http, _until, _spawn, _kill = ports, http, until, spawn, kill


def _flower_environments(tmp_path) -> dict[int, bytes]:
    """Return {pid: environ} of every live process whose FLWR_HOME lies under `tmp_path` (Flower's, not ours)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"FLWR_HOME={tmp_path}".encode() in env:
            found[int(proc.name)] = env
    return found


def test_server_and_two_managed_clients_finish_over_tls_then_resume(tmp_path):
    link, control, status, m0, m1 = _ports(5)
    certs = make_tls(tmp_path / "certs", ["127.0.0.1"])
    env = {**os.environ, "FEDMEMES_TOKEN": TOKEN}  # FEDMEMES_CACHE: the session cache (conftest)
    run_dir = tmp_path / "run"
    server_args = [
        "server",
        "debug=tiny",
        "num_rounds=1",
        f"run_dir={run_dir}",
        f"hydra.run.dir={run_dir}",
        f"server.address=127.0.0.1:{link}",
        f"server.control_port={control}",
        f"server.certs={certs.ca.parent}",
        f"server.flwr_home={tmp_path / 'flwr'}",
        f"server.status_port={status}",
        "server.heartbeat_s=2",
    ]
    procs = []
    try:
        server = _spawn(server_args, tmp_path / "server.log", env)
        procs.append(server)
        for i, port in enumerate((m0, m1)):
            procs.append(
                _spawn(
                    [
                        "manager",
                        "--name",
                        f"c{i}",
                        "--port",
                        str(port),
                        "--status-url",
                        f"https://127.0.0.1:{status}",
                        "--heartbeat-s",
                        "2",
                        "--superlink",
                        f"127.0.0.1:{link}",
                        "--partition-id",
                        str(i),
                        "--num-partitions",
                        "2",
                        "--root-certificates",
                        str(certs.ca),
                        "--flwr-home",
                        str(tmp_path / f"n{i}"),
                    ],
                    tmp_path / f"manager{i}.log",
                    env,
                )
            )
        for port in (m0, m1):
            wait_for_port("127.0.0.1", port, 60)
            assert _http("GET", f"http://127.0.0.1:{port}/health")[0] == 200
            assert _http("GET", f"http://127.0.0.1:{port}/info")[0] == 401  # no token
            code, info = _http("GET", f"http://127.0.0.1:{port}/info", TOKEN)
            assert code == 200 and info["supernode_running"] is False and info["tls"] is True
            assert _http("POST", f"http://127.0.0.1:{port}/start", TOKEN) == (
                200,
                {"started": True, "supernode_running": True},
            )

        def online() -> list[str]:  # the status API serves TLS from server.certs; names need the token
            clients = _http("GET", f"https://127.0.0.1:{status}/status", TOKEN, ca=certs.ca)[1].get("clients", [])
            return sorted(c["name"] for c in clients if c["online"])

        assert _until(lambda: online() == ["c0", "c1"], 60, "both managers online in the status API", procs)
        open_view = _http("GET", f"https://127.0.0.1:{status}/status", ca=certs.ca)[1]
        assert "run_dir" not in open_view and "c0" not in json.dumps(open_view) and len(open_view["clients"]) == 2
        flower = _flower_environments(tmp_path)  # SuperLink gate, SuperExec, SuperNodes (+ apps while they run)
        assert len(flower) >= 3 and not [pid for pid, env in flower.items() if TOKEN.encode() in env]
        assert server.wait(600) == 0, (tmp_path / "server.log").read_text()[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [r["round"] for r in metrics["rounds"]] == [0, 1] and metrics["test"]["n"] > 0
        assert {p.name for p in run_dir.iterdir()} == RUN_FILES
        # A new server resumes the finished run for one more round. A SuperNode that outlived its SuperLink is not
        # taken back by a new one (Flower 1.42), so the managers restart theirs, as an operator would.
        resumed = _spawn([*server_args, "num_rounds=2", f"resume={run_dir}"], tmp_path / "server2.log", env)
        procs.append(resumed)
        for port in (m0, m1):
            assert _http("POST", f"http://127.0.0.1:{port}/stop", TOKEN)[0] == 200
            assert _http("POST", f"http://127.0.0.1:{port}/start", TOKEN)[1]["started"] is True
        assert resumed.wait(600) == 0, (tmp_path / "server2.log").read_text()[-3000:]
        assert [r["round"] for r in json.loads((run_dir / "metrics.json").read_text())["rounds"]] == [0, 1, 2]
        assert _http("POST", f"http://127.0.0.1:{m0}/stop", TOKEN) == (
            200,
            {"stopped": True, "supernode_running": False},
        )
        assert not list(run_dir.glob("*.tmp"))  # checkpoint and metrics writes completed
    finally:
        for p in procs:
            _kill(p)
