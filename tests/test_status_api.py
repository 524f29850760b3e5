"""The server's status API: heartbeats need the token, clients go offline, rounds come from metrics.json."""

import json

import pytest
from fastapi.testclient import TestClient

from fedmemes.deploy.auth import TOKEN_HEADER, read_token
from fedmemes.deploy.status_api import Heartbeat, RunStatus, create_app

TOKEN = "s3cret-token"


def test_heartbeat_needs_the_token_and_status_shows_clients_and_rounds(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"rounds": [{"round": 0, "auroc": 0.5}, {"round": 1, "auroc": 0.61}]}))
    status = RunStatus(tmp_path, heartbeat_s=10)
    status.state = "running"
    api = TestClient(create_app(status, TOKEN))
    assert api.post("/heartbeat", json={"name": "a"}).status_code == 401
    assert api.post("/heartbeat", json={"name": "a"}, headers={TOKEN_HEADER: "wrong"}).status_code == 401
    reply = api.post("/heartbeat", json={"name": "a", "info": {"device": "cpu"}}, headers={TOKEN_HEADER: TOKEN})
    assert reply.status_code == 200 and reply.json()["current_round"] == 1
    body = api.get("/status").json()
    assert body["state"] == "running" and body["current_round"] == 1 and [r["auroc"] for r in body["rounds"]] == [0.5, 0.61]
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
