"""`fedmemes serve`: the FastAPI service scores like `fedmemes predict` and refuses bad requests."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fedmemes.tools.image_urls import UrlPolicy
from fedmemes.tools.predict import load_run
from fedmemes.tools.predict_inputs import read_jsonl
from fedmemes.tools.serve import Limits, create_app, main

TOKEN = "s3cret-token"
AUTH = {"X-Fedmemes-Token": TOKEN}


@pytest.fixture(scope="module")
def run(tiny_run, one_thread):
    return load_run(tiny_run)


@pytest.fixture(scope="module")
def data(tiny_data) -> Path:
    return tiny_data.folder


@pytest.fixture(scope="module")
def expected(run, data) -> dict[str, float]:
    """P(hateful) of the first test memes, scored the `fedmemes predict` way."""
    inputs = read_jsonl(data / "test_seen.jsonl")
    memes = inputs.memes[:6]
    return {m.id: float(p) for m, p in zip(memes, run.score(memes), strict=True)}


def _rows(data: Path, n: int = 6) -> list[dict]:
    return [json.loads(line) for line in (data / "test_seen.jsonl").read_text().splitlines()[:n]]


def _png(size: tuple[int, int] = (40, 40), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format=fmt)
    return buf.getvalue()


def test_health_model_and_token(run):
    client = TestClient(create_app(run, token=TOKEN))
    assert client.get("/health").json() == {"status": "ok"}  # open: load balancers probe it
    assert client.get("/model").status_code == 401
    assert client.get("/model", headers={"X-Fedmemes-Token": "wrong"}).status_code == 401
    info = client.get("/model", headers=AUTH).json()
    assert info["run"] == str(run.run_dir) and info["model"] == "best"
    assert info["config"]["model"].endswith("EarlyFusion") and info["config"]["image_size"] == 32
    assert info["test"]["auroc"] == run.metrics["test"]["auroc"] and info["threshold"] == run.threshold
    assert client.post("/predict", data={"text": "x"}, files={"image": ("a.png", _png())}).status_code == 401


def test_predict_one_meme_matches_the_cli_score(run, data, expected):
    client = TestClient(create_app(run))
    for row in _rows(data, 3):
        with (data / row["img"]).open("rb") as f:
            got = client.post("/predict", data={"text": row["text"]}, files={"image": ("meme.png", f, "image/png")})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["p_hateful"] == pytest.approx(expected[str(row["id"])], abs=1e-5)
        assert body["pred"] == int(body["p_hateful"] > run.threshold) and body["threshold"] == run.threshold
        assert body["model"] == f"{run.run_dir.name}/best"


def test_predict_refuses_bad_inputs(run):
    small = Limits(max_request_bytes=20_000, max_image_pixels=50 * 50, max_text_chars=30)
    client = TestClient(create_app(run, limits=small))
    ok = {"image": ("a.png", _png())}
    assert client.post("/predict", data={"text": "when tourists never change"}, files=ok).status_code == 200
    assert client.post("/predict", files=ok).status_code == 422  # no text
    assert client.post("/predict", data={"text": "hello"}).status_code == 422  # no image
    bad = client.post("/predict", data={"text": "hello"}, files={"image": ("a.png", b"\x89PNG not really")})
    assert bad.status_code == 415 and "PNG, JPEG" in bad.json()["detail"]  # no allowed parser identifies it
    truncated = client.post("/predict", data={"text": "hello"}, files={"image": ("a.png", _png()[:60])})
    assert truncated.status_code == 422
    tiff = client.post("/predict", data={"text": "hello"}, files={"image": ("a.tif", _png(fmt="TIFF"))})
    assert tiff.status_code == 415 and "not a PNG, JPEG, GIF, WEBP, BMP image" in tiff.json()["detail"]
    big = client.post("/predict", data={"text": "hello"}, files={"image": ("a.png", _png((60, 60)))})
    assert big.status_code == 413 and "decompression-bomb" in big.json()["detail"]
    long_text = client.post("/predict", data={"text": "x" * 31}, files=ok)
    assert long_text.status_code == 413 and "limit is 30" in long_text.json()["detail"]
    huge = client.post("/predict", data={"text": "hello"}, files={"image": ("a.png", os.urandom(30_000))})
    assert huge.status_code == 413 and "over the limit" in huge.json()["detail"]
    blank = client.post("/predict", data={"text": "   "}, files=ok)
    assert blank.status_code == 422 and "bad_text" in blank.text


def test_batch_scores_good_lines_and_reports_bad_ones(run, data, expected, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png())
    root = tmp_path / "root"
    (root / "img").mkdir(parents=True)
    rows = _rows(data)
    for row in rows:
        (root / row["img"]).write_bytes((data / row["img"]).read_bytes())
    (root / "img" / "escape.png").symlink_to(outside)
    fetched: list[str] = []

    def fake_fetch(url: str, policy: UrlPolicy) -> bytes:  # no network in tests
        fetched.append(url)
        return (data / rows[2]["img"]).read_bytes()

    lines = [
        json.dumps(rows[0]),
        "{broken",
        json.dumps({**rows[1], "img": "../outside.png"}),
        json.dumps({**rows[1], "img": "/etc/passwd"}),
        json.dumps({**rows[1], "img": "img/escape.png"}),
        json.dumps({**rows[2], "img": "http://example.com/a.png"}),
        json.dumps({"id": 9, "text": "no image"}),
        json.dumps({k: v for k, v in rows[4].items() if k != "label"}),
    ]
    body = "\n".join(lines).encode()
    closed = TestClient(create_app(run, image_root=root, fetch=fake_fetch)).post("/predict/batch", content=body).json()
    assert [r["id"] for r in closed["results"]] == [str(rows[0]["id"]), str(rows[4]["id"])]
    assert closed["results"][0]["p_hateful"] == pytest.approx(expected[str(rows[0]["id"])], abs=1e-5)
    errors = {e["line"]: e for e in closed["errors"]}
    assert sorted(errors) == [2, 3, 4, 5, 6, 7]
    assert errors[2]["kind"] == "bad_json" and "outside the image root" in errors[3]["detail"]
    assert "outside the image root" in errors[4]["detail"] and "outside the image root" in errors[5]["detail"]
    assert "--allow-url" in errors[6]["detail"] and "key 'img' is missing" in errors[7]["detail"]
    assert fetched == []  # never fetched without --allow-url

    opened = (
        TestClient(create_app(run, image_root=root, urls=UrlPolicy(frozenset({"example.com"})), fetch=fake_fetch))
        .post("/predict/batch", content=body)
        .json()
    )
    assert fetched == ["http://example.com/a.png"]
    by_id = {r["id"]: r for r in opened["results"]}
    # the fetched bytes
    assert by_id[str(rows[2]["id"])]["p_hateful"] == pytest.approx(expected[str(rows[2]["id"])], abs=1e-5)

    no_root = TestClient(create_app(run)).post("/predict/batch", content=json.dumps(rows[0]).encode()).json()
    assert no_root["results"] == [] and "--image-root" in no_root["errors"][0]["detail"]
    many = TestClient(create_app(run, image_root=root, limits=Limits(max_batch_lines=2))).post(
        "/predict/batch", content=body
    )
    assert many.status_code == 413


def test_serve_refuses_an_open_host_without_a_token(run, monkeypatch, capsys):
    monkeypatch.delenv("FEDMEMES_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="--insecure"):
        main([str(run.run_dir), "--host", "0.0.0.0"])
    with pytest.raises(SystemExit):  # argparse: the folder is named before the model is loaded
        main([str(run.run_dir.parent), "--host", "127.0.0.1"])
    assert "is not a run folder (no config.yaml in it)" in capsys.readouterr().err
