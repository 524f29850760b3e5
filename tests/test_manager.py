"""The client manager API: token required, /info describes the client, /start and /stop drive a real process."""

import argparse
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient

from fedmemes.deploy import manager as manager_module
from fedmemes.deploy import supernode
from fedmemes.deploy.auth import TOKEN_HEADER
from fedmemes.deploy.manager import Manager, create_app

TOKEN = "m-token"


def _args(**kw) -> argparse.Namespace:
    return supernode.parser().parse_args(
        [
            "--superlink",
            "127.0.0.1:9",
            "--partition-id",
            "1",
            "--num-partitions",
            "2",
            *[x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))],
        ]
    )


def test_requests_without_the_token_are_refused_but_health_is_open(tmp_path):
    api = TestClient(create_app(Manager("a", _args(), tmp_path), TOKEN))
    assert api.get("/health").json() == {"status": "ok"}
    for method, path in (("get", "/info"), ("post", "/start"), ("post", "/stop")):
        assert getattr(api, method)(path).status_code == 401
        assert getattr(api, method)(path, headers={TOKEN_HEADER: "nope"}).status_code == 401


def test_info_start_and_stop_a_supernode_process(tmp_path, monkeypatch):
    # A stand-in for flower-supernode: a process that lives until stopped.
    monkeypatch.setattr(
        supernode, "command_from_args", lambda args: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    (tmp_path / "own" / "img").mkdir(parents=True)
    (tmp_path / "own" / "train.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    mgr = Manager("a", _args(data_dir=tmp_path / "own"), tmp_path / "home")
    api = TestClient(create_app(mgr, TOKEN))
    auth = {TOKEN_HEADER: TOKEN}
    info = api.get("/info", headers=auth).json()
    assert info["name"] == "a" and info["device"] in ("cpu", "cuda") and info["supernode_running"] is False
    assert info["data"] == {
        "partition_id": 1,
        "num_partitions": 2,
        "data_dir": str(tmp_path / "own"),
        "train_rows": 2,
        "images": 0,
    }
    try:
        assert api.post("/start", headers=auth).json() == {"started": True, "supernode_running": True}
        assert api.post("/start", headers=auth).json()["started"] is False  # already running: not twice
        pid = mgr.proc.pid
        assert api.post("/stop", headers=auth).json() == {"stopped": True, "supernode_running": False}
        time.sleep(0.1)
        assert api.get("/info", headers=auth).json()["supernode_running"] is False
        assert not _alive(pid)
    finally:
        mgr.stop()


def _alive(pid: int) -> bool:
    try:
        import os

        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_heartbeat_reaches_the_status_api(tmp_path, monkeypatch):
    from fedmemes.deploy.status_api import RunStatus
    from fedmemes.deploy.status_api import create_app as status_app

    status = RunStatus(tmp_path, heartbeat_s=1)
    server = TestClient(status_app(status, TOKEN))

    def post(req, timeout, context=None):  # route urllib's request through the in-process API
        reply = server.post("/heartbeat", content=req.data, headers=dict(req.header_items()))
        reply.raise_for_status()
        return _Reply(reply.content)

    monkeypatch.setattr(manager_module.urllib.request, "urlopen", post)
    manager_module.heartbeat_once(Manager("b", _args(), tmp_path), "http://server:8090", TOKEN)
    clients = status.snapshot()["clients"]
    assert [(c["name"], c["online"], c["info"]["data"]["partition_id"]) for c in clients] == [("b", True, 1)]


def test_heartbeats_go_on_after_any_error_and_info_never_fails(tmp_path, monkeypatch):
    (tmp_path / "own" / "img").mkdir(parents=True)
    (tmp_path / "own" / "train.jsonl").write_bytes(b'{"id": 1}\n\xff\xfe not utf-8\n{"id": 3}\n')
    mgr = Manager("c", _args(data_dir=tmp_path / "own"), tmp_path / "home")
    assert mgr.info()["data"]["train_rows"] == 3  # counted as bytes: a non-UTF-8 line is a line
    replies = iter([b"<html>not json</html>", b"[1, 2]", b'{"current_round": "x"}', b'{"current_round": 4}'])
    calls, stop = [], threading.Event()

    def urlopen(req, timeout, context=None):
        calls.append(req.full_url)
        if len(calls) == 1:
            raise RuntimeError("a bug in the stack below us")
        if len(calls) == 5:  # the last reply: the loop ends once it has read it (a test's own poll could miss a beat)
            stop.set()
        return _Reply(next(replies))

    monkeypatch.setattr(manager_module.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(mgr, "running", lambda: True)
    beats = threading.Thread(target=manager_module.heartbeat_loop, args=(mgr, "http://server:8090", TOKEN, 0.01, stop))
    beats.start()
    beats.join(10)
    assert not beats.is_alive() and len(calls) == 5 and mgr.last_round_seen == 4  # 4 failures of 4 kinds, 1 good
    # /info answers 200 even when reading the data folder itself fails.
    monkeypatch.setattr(mgr, "data", lambda: 1 / 0)
    reply = TestClient(create_app(mgr, TOKEN)).get("/info", headers={TOKEN_HEADER: TOKEN})
    assert reply.status_code == 200 and reply.json()["data"] == {"error": "ZeroDivisionError: division by zero"}


def test_manager_refuses_plain_text_beyond_loopback_and_big_bodies(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDMEMES_TOKEN", TOKEN)
    base = ["--superlink", "127.0.0.1:9", "--partition-id", "0", "--num-partitions", "2"]
    for extra, needle in (
        (["--host", "0.0.0.0"], "--host '0.0.0.0'"),
        (["--status-url", "http://server:8090"], "--status-url 'server'"),
    ):
        with pytest.raises(SystemExit) as done:
            manager_module.main([*base, *extra])
        assert done.value.code == 2 and needle in capsys.readouterr().err
    api = TestClient(create_app(Manager("a", _args(), tmp_path), TOKEN))
    assert api.post("/stop", content=b"x" * (64 * 1024 + 1), headers={TOKEN_HEADER: TOKEN}).status_code == 413
    assert api.post("/stop", headers={TOKEN_HEADER: TOKEN}).status_code == 200


class _Reply:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def read(self, limit: int = -1) -> bytes:
        return self.body if limit < 0 else self.body[:limit]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None
