"""Failures in a real deployment on 127.0.0.1: a client killed mid-run does not end the run, and a SuperNode whose
key is not registered with the SuperLink is refused while registered ones train."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from deploy_helpers import FEDMEMES, kill, local_server_args, ports, protobuf_post, spawn, until
from safetensors import safe_open
from safetensors.torch import load_file

from fedmemes.bookkeeping import checkpoint
from fedmemes.deploy.certs import TlsFiles, make_node_key
from fedmemes.deploy.processes import wait_for_port
from fedmemes.deploy.superlink import CONNECTION, SuperLink

pytestmark = pytest.mark.slow


def _rounds(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["rounds"]
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or caught mid-write
        return []


def _client(i: int, n: int, link: int, tmp_path: Path, env: dict, *flags: str) -> subprocess.Popen:
    return spawn(
        [
            "client",
            "--superlink",
            f"127.0.0.1:{link}",
            "--partition-id",
            str(i),
            "--num-partitions",
            str(n),
            "--flwr-home",
            str(tmp_path / f"n{i}-{time.monotonic_ns()}"),
            *flags,
        ],
        tmp_path / f"client{i}.log",
        env,
    )


def _state_slots(path: Path) -> dict[str, tuple[int, dict[str, torch.Tensor]]]:
    """Read a client state file (fedmemes/bookkeeping/client_state.py): {slot: (round it was made in, tensors)}."""
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return {
        slot: (int(meta[slot]), {k.split("/", 1)[1]: t for k, t in tensors.items() if k.startswith(f"{slot}/")})
        for slot in ("latest", "before")
        if slot in meta
    }


def test_a_client_killed_mid_run_does_not_end_it(tmp_path):
    """SCAFFOLD: the killed SuperNode's control variate c_i survives on its disk and the restarted one goes on from
    it. The run cannot equal an uninterrupted one: round 2 aggregates two replies instead of three, and a node killed
    after saving round 2's c_i but before its reply arrived keeps a c_i whose change the server never added to c."""
    link, control = ports(2)
    env, run_dir = dict(os.environ), tmp_path / "run"  # FEDMEMES_CACHE: the session cache (conftest)
    # 3 clients, no fixed sample (clients_per_round=null): fraction_train=1.0 trains every connected node, at least 2.
    # A round starts once 3 nodes are online: round 1 has all three, and round 3 waits for the restarted one
    # (a SuperNode takes up to a minute to start on 2 busy cores), so 3 rounds show the rejoin, no spare round.
    server = spawn(
        local_server_args(
            run_dir,
            link,
            control,
            tmp_path / "flwr",
            "debug=tiny",
            "strategy=scaffold",
            "personalization=local_head",  # FedPer: each node's head stays in its state, beside c_i
            "num_rounds=3",
            "num_clients=3",
            "clients_per_round=null",
            "server.strategy.min_train_nodes=2",
            "server.strategy.min_available_nodes=3",
        ),
        tmp_path / "server.log",
        env,
    )
    procs, started = [server], time.monotonic()
    try:
        # Clients started once the SuperLink listens connect at once (no retry back-off): all three are in round 1.
        wait_for_port("127.0.0.1", link, 120, server)
        procs += [_client(i, 3, link, tmp_path, env) for i in range(3)]
        # round 1 scored and checkpointed (metrics.json is written first): the checkpoint names the clients' run key
        until(lambda: len(_rounds(run_dir)) >= 2 and checkpoint.exists(run_dir), 480, "round 1 checkpoint", procs)
        assert _rounds(run_dir)[1]["clients"] == 3, "all three clients should train round 1"
        # Round 2 is under way: the dead node's reply never comes; the SuperLink marks it offline after 2 missed
        # heartbeats (Flower 1.42: 30 s each, not configurable), well inside server.round_timeout.
        kill(procs[3], signal.SIGKILL)
        killed_at = time.monotonic()
        run_key = checkpoint.load(run_dir).setup["run_key"]
        state = Path(env["FEDMEMES_CACHE"]) / "client_state" / run_key / "2.safetensors"
        made, c_i = _state_slots(state)["latest"]  # round 1's c_i, or round 2's if it got that far
        assert made in (1, 2) and any(t.abs().sum() > 0 for t in c_i.values()), "SCAFFOLD's c_i is on the node's disk"
        head = {k: t for k, t in c_i.items() if k.startswith("personal/")}
        assert head and all(k.startswith("personal/head.") for k in head), "the local head is on the node's disk"
        procs.append(_client(2, 3, link, tmp_path, env))  # restarted: it should join a later round as a new node
        assert server.wait(900) == 0, (tmp_path / "server.log").read_text()[-3000:]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2, 3] and metrics["test"]["n"] > 0
        assert metrics["rounds"][2]["clients"] == 2, "round 2 completes with the two live clients"
        assert metrics["rounds"][3]["clients"] == 3, "the restarted client trains in the last round"
        assert len(metrics["clients"]) == 3
        # The restarted node (an empty Context.state) trained round 3 from the c_i on its disk: the file goes on from
        # where it was, round `made`'s c_i now the slot before round 3's
        slots = _state_slots(state)
        assert slots["latest"][0] == 3 and slots["before"][0] == made
        assert (
            all(torch.equal(slots["before"][1][k], t) for k, t in c_i.items())
            and slots["before"][1].keys() == c_i.keys()
        )
        # The local head: kept as it was before the kill, then trained on in round 3 by the restarted node, which
        # started from it (restored from disk), not from the global model's head, which never moves (never averaged)
        later = {k: t for k, t in slots["latest"][1].items() if k.startswith("personal/")}
        assert later.keys() == head.keys() and any(not torch.equal(later[k], t) for k, t in head.items())
        final = load_file(run_dir / "final.safetensors")
        global_head = {f"personal/{k}": t for k, t in final.items() if k.startswith("head.")}
        assert global_head.keys() == head.keys() and not any(torch.equal(global_head[k], t) for k, t in head.items())
        with safe_open(str(state), "pt") as f:  # the restarted node's round 3 went on from round `made`'s state
            assert f.metadata()["latest_from"] == str(made)
        print(f"run {time.monotonic() - started:.0f}s, {time.monotonic() - killed_at:.0f}s after the kill")
    finally:
        for p in procs:
            kill(p)


def _control_calls(rogue_pub: Path, run_id: int) -> dict[str, bytes]:
    """Return the Control API calls an outsider would make, as Flower's CLI encodes them."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.proto.control_pb2 import (
        ListRunsRequest,
        RegisterNodeRequest,
        StartRunRequest,
        StopRunRequest,
    )

    return {
        "list-runs": ListRunsRequest().SerializeToString(),
        "start-run": StartRunRequest().SerializeToString(),
        "stop-run": StopRunRequest(run_id=run_id).SerializeToString(),
        "register-node": RegisterNodeRequest(public_key=try_load_public_key(rogue_pub)).SerializeToString(),
    }


def test_only_registered_supernodes_train_and_outsiders_cannot_drive_the_superlink(tmp_path):
    """TLS + node auth: an unregistered key is refused, a caller holding only ca.crt is refused on every Control
    call through the address clients dial, the operator's `flwr` on the loopback control port works, and the two
    registered SuperNodes finish a run (one round: both train in it)."""
    link, control = ports(2)
    env, run_dir, certs = dict(os.environ), tmp_path / "run", tmp_path / "certs"
    subprocess.run(
        [*FEDMEMES, "certs", str(certs), "--host", "127.0.0.1", "--nodes", "2"],
        check=True,
        env=env,
        capture_output=True,
    )
    rogue_key, rogue_pub = make_node_key(tmp_path / "rogue", "rogue")  # a valid key pair the server never registered
    server = spawn(
        [
            "server",
            "debug=tiny",
            "num_rounds=1",
            "num_clients=2",
            f"run_dir={run_dir}",
            f"hydra.run.dir={run_dir}",
            f"server.address=127.0.0.1:{link}",
            f"server.control_port={control}",
            f"server.flwr_home={tmp_path / 'flwr'}",
            f"server.certs={certs}",
            "server.status_port=null",
            "server.supernode_auth=true",
            f"server.authorized_keys=[{certs / 'node-0.pub'},{certs / 'node-1.pub'}]",
        ],
        tmp_path / "server.log",
        env,
    )
    tls = ("--root-certificates", str(certs / "ca.crt"))
    procs = [server]
    superlink = SuperLink(f"127.0.0.1:{link}", tmp_path / "flwr", TlsFiles.in_dir(certs), control_port=control)

    def nodes() -> list[dict]:
        try:
            return superlink.flwr("supernode", "list", CONNECTION, timeout_s=60)["nodes"]
        except (RuntimeError, KeyError, OSError, subprocess.TimeoutExpired):  # SuperLink (or its folder) not up yet
            return []

    try:
        wait_for_port("127.0.0.1", link, 120, server)
        procs.append(_client(0, 2, link, tmp_path, env, *tls, "--auth-key", str(certs / "node-0.key")))
        until(lambda: [n for n in nodes() if n["status"] == "online"], 120, "node-0 online", procs)
        rogue = _client(1, 2, link, tmp_path, env, *tls, "--auth-key", str(rogue_key))
        procs.append(rogue)
        assert rogue.wait(180) != 0  # a SuperNode takes up to a minute to start on 2 busy cores
        assert "Failed to activate SuperNode" in (tmp_path / "client1.log").read_text()
        # The operator's own `flwr ls` on the loopback control port sees the pending run.
        runs = superlink.flwr("ls", CONNECTION, timeout_s=60)["runs"]
        assert len(runs) == 1
        run_id = int(runs[0]["run-id"])
        # An outsider with only the public ca.crt, on the address the clients dial: every Control call is refused.
        replies = {
            name: protobuf_post(f"https://127.0.0.1:{link}/v1/control/{name}", body, certs / "ca.crt")
            for name, body in _control_calls(rogue_pub, run_id).items()
        }
        print("Control calls on the public address:", json.dumps(replies, indent=1))
        assert {name: code for name, (code, _) in replies.items()} == dict.fromkeys(replies, 403)
        assert all("loopback control port" in body for _, body in replies.values())
        # The same list-runs on the control port answers (so the refusal above is the gate, not a bad request).
        assert (
            protobuf_post(
                f"https://127.0.0.1:{control}/v1/control/list-runs",
                _control_calls(rogue_pub, run_id)["list-runs"],
                certs / "ca.crt",
            )[0]
            == 200
        )
        # The SuperLink knows the two registered keys (node-1 not yet connected) and nothing of the rogue.
        assert sorted(n["status"] for n in nodes()) == ["online", "registered"]
        assert [r["round"] for r in _rounds(run_dir)] in ([], [0])  # the run still waits for its 2 clients
        procs.append(_client(1, 2, link, tmp_path, env, *tls, "--auth-key", str(certs / "node-1.key")))
        assert server.wait(600) == 0, (tmp_path / "server.log").read_text()[-3000:]
        rounds = _rounds(run_dir)
        assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["clients"] == 2
    finally:
        for p in procs:
            kill(p)
