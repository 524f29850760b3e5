"""The server's status API: heartbeats need the token, clients go offline, rounds come from metrics.json."""

import json

import pytest
from fastapi.testclient import TestClient

from fedmemes.deploy.auth import TOKEN_HEADER, read_token
from fedmemes.deploy.status_api import Heartbeat, RunStatus, create_app

TOKEN = "s3cret-token"


def test_heartbeat_needs_the_token_and_status_shows_clients_and_rounds(tmp_path):
    (tmp_path / "metrics.json").write_text(
        json.dumps({"rounds": [{"round": 0, "auroc": 0.5}, {"round": 1, "auroc": 0.61}]})
    )
    status = RunStatus(tmp_path, heartbeat_s=10)
    status.state = "running"
    api = TestClient(create_app(status, TOKEN))
    assert api.post("/heartbeat", json={"name": "a"}).status_code == 401
    assert api.post("/heartbeat", json={"name": "a"}, headers={TOKEN_HEADER: "wrong"}).status_code == 401
    reply = api.post("/heartbeat", json={"name": "a", "info": {"device": "cpu"}}, headers={TOKEN_HEADER: TOKEN})
    assert reply.status_code == 200 and reply.json()["current_round"] == 1
    body = api.get("/status", headers={TOKEN_HEADER: TOKEN}).json()
    assert (
        body["state"] == "running"
        and body["current_round"] == 1
        and [r["auroc"] for r in body["rounds"]] == [0.5, 0.61]
    )
    assert [(c["name"], c["online"], c["info"]["device"]) for c in body["clients"]] == [("a", True, "cpu")]
    assert TOKEN not in json.dumps(body)


def test_client_goes_offline_after_missed_heartbeats(tmp_path):
    status = RunStatus(tmp_path, heartbeat_s=10)
    status.beat(Heartbeat(name="b"))
    status.clients["b"]["last_heartbeat"] -= 26  # 2.6 periods ago
    assert status.snapshot()["clients"][0]["online"] is False
    assert status.snapshot()["current_round"] is None  # no metrics.json yet


def test_token_comes_from_file_or_env_with_a_fix_when_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDMEMES_TOKEN", raising=False)
    with pytest.raises(ValueError, match="FEDMEMES_TOKEN"):
        read_token()
    monkeypatch.setenv("FEDMEMES_TOKEN", "from-env")
    assert read_token() == "from-env"
    (tmp_path / "t").write_text("from-file\n")
    assert read_token(tmp_path / "t") == "from-file"


def test_open_status_names_nothing_and_bodies_are_capped_before_parsing(tmp_path):
    (tmp_path / "secret-run-dir").mkdir()
    (tmp_path / "secret-run-dir" / "metrics.json").write_text(
        json.dumps({"rounds": [{"round": 1, "auroc": 0.6, "dropped": {"alice-laptop": "nan"}, "note": "from alice"}]})
    )
    status = RunStatus(tmp_path / "secret-run-dir", heartbeat_s=10)
    api = TestClient(create_app(status, TOKEN))
    auth = {TOKEN_HEADER: TOKEN}
    info = {"data": {"data_dir": "/home/alice/memes"}, "superlink": "server.example.org:9092"}
    assert api.post("/heartbeat", json={"name": "alice-laptop", "info": info}, headers=auth).status_code == 200
    open_view = api.get("/status").json()
    assert open_view["clients"] == [
        {"online": True, "seconds_since_heartbeat": open_view["clients"][0]["seconds_since_heartbeat"]}
    ]
    for secret in ("secret-run-dir", "alice", "example.org", "memes"):
        assert secret not in json.dumps(open_view)
    assert open_view["rounds"] == [{"round": 1, "auroc": 0.6}] and open_view["current_round"] == 1
    assert api.get("/status", headers=auth).json()["clients"][0]["name"] == "alice-laptop"  # the token shows all
    big = b'{"name": "' + b"x" * (64 * 1024) + b'"}'
    assert api.post("/heartbeat", content=big, headers={TOKEN_HEADER: "wrong"}).status_code == 413  # not even parsed

    def chunks():  # no Content-Length: the cap holds on a streamed body too
        for _ in range(100):
            yield b"x" * 1024

    assert api.post("/heartbeat", content=chunks(), headers=auth).status_code == 413
    assert api.post("/heartbeat", content=b'{"name": "a"}', headers={TOKEN_HEADER: "wrong"}).status_code == 401
    deep = b'{"name": "a", "info": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}"
    assert api.post("/heartbeat", content=deep, headers=auth).status_code == 422  # refused, not a 500
    assert api.post("/heartbeat", content=b"not json", headers=auth).status_code == 422


def test_status_api_serves_tls_with_the_server_certificate(tmp_path):
    import ssl
    import urllib.request

    from deploy_helpers import ports

    from fedmemes.deploy.certs import make_tls
    from fedmemes.deploy.processes import wait_for_port
    from fedmemes.deploy.status_api import serve_in_thread

    tls = make_tls(tmp_path / "certs", ["status.example.org"])
    (port,) = ports(1)
    server = serve_in_thread(create_app(RunStatus(tmp_path, 10), TOKEN), "127.0.0.1", port, tls)
    try:
        wait_for_port("127.0.0.1", port, 20)
        context = ssl.create_default_context(cafile=str(tls.ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=10, context=context) as reply:
            assert json.loads(reply.read()) == {"status": "ok"}
        with pytest.raises(OSError):  # plain HTTP gets no answer: the token never crosses in clear
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10)
    finally:
        server.should_exit = True
