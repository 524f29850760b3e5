"""A hostile run on 127.0.0.1, deployed (SuperLink + 2 SuperNodes) and simulated: the clients' site policies refuse the
callables the server's overrides name. Nothing runs on the clients, their refusals reach the server, the run exits 4."""

import json
import os
import subprocess
import time

import pytest
from deploy_helpers import FEDMEMES, kill, local_server_args, ports, spawn

from fedmemes.bookkeeping.run_steps import EXIT_NOTHING_AGGREGATED
from fedmemes.deploy.processes import wait_for_port

pytestmark = pytest.mark.slow


def test_a_server_naming_callables_runs_nothing_on_the_clients(tmp_path):
    link, control = ports(2)
    env, run_dir, marker = dict(os.environ), tmp_path / "run", tmp_path / "marker"
    policy = tmp_path / "site.yaml"
    policy.write_text("name: client-a\nlimits: {max_rounds: 5}\n")
    hostile = [  # the server never builds an optimizer or a loss itself: only the clients would run these
        "optimizer._partial_=false",
        "optimizer._target_=builtins.open",
        "~optimizer.weight_decay",
        f"+optimizer.file={marker}",
        "+optimizer.mode=w",
        "loss._target_=pathlib.Path.touch",
        f"+loss.self={marker}",
    ]
    server = spawn(
        local_server_args(run_dir, link, control, tmp_path / "flwr", "debug=tiny", "num_rounds=2", *hostile),
        tmp_path / "server.log",
        env,
    )
    procs = [server]
    try:
        wait_for_port("127.0.0.1", link, 120, server)
        for i, flags in enumerate((["--policy", str(policy)], [])):  # one site with its own policy, one default
            procs.append(
                spawn(
                    ["client", "--superlink", f"127.0.0.1:{link}", "--partition-id", str(i), "--num-partitions", "2"]
                    + ["--flwr-home", str(tmp_path / f"n{i}-{time.monotonic_ns()}"), *flags],
                    tmp_path / f"client{i}.log",
                    env,
                )
            )
        code = server.wait(timeout=420)
    finally:
        for proc in procs:
            kill(proc)
    log = (tmp_path / "server.log").read_text()
    assert code == EXIT_NOTHING_AGGREGATED, log[-3000:]
    assert not marker.exists()
    assert "site client-a refuses optimizer._target_=builtins.open" in log  # the client's error, in the server's log
    assert "site partition-1 refuses" in log and "no reply aggregated" in log
    assert "deprecat" not in log.lower()  # `flwr run` against the deployment warns of nothing (its warnings land here)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["kept_previous_model"] for r in metrics["rounds"] if r["round"] > 0] == [1, 1]
    assert metrics["ended"]["code"] == EXIT_NOTHING_AGGREGATED and "refuses" in metrics["ended"]["reason"]
    assert metrics["test"]["n"] > 0  # the files a finished run leaves are there all the same


def test_the_issues_simulation_truncates_nothing_and_exits_non_zero(tmp_path):
    # The example of issue 24: under `fedmemes simulate` this truncated the file in every client and exited 0.
    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [*FEDMEMES, "simulate", "debug=tiny", "num_rounds=1", "optimizer._partial_=false"]
        + ["optimizer._target_=builtins.open", "~optimizer.weight_decay", f"+optimizer.file={victim}"]
        + ["+optimizer.mode=w", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == EXIT_NOTHING_AGGREGATED, proc.stderr[-2000:]
    assert victim.read_text() == "kept"
    assert "no client reply was aggregated in any of 1 rounds" in proc.stderr
    assert "refuses optimizer._target_=builtins.open" in proc.stderr
