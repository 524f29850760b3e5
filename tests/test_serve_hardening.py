"""`fedmemes serve` on a network: slow requests, slow clients, hostile URLs and JSON, and what errors reveal."""

from __future__ import annotations

import http.server
import io
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from deploy_helpers import seconds_until_closed
from fastapi.testclient import TestClient
from PIL import Image

from fedmemes.deploy.slow_clients import SlowClientLimits
from fedmemes.tools import image_urls
from fedmemes.tools.image_urls import UrlPolicy, UrlRefused, is_public
from fedmemes.tools.predict import load_run
from fedmemes.tools.predict_inputs import read_jsonl
from fedmemes.tools.serve import create_app
from fedmemes.tools.serve_guards import Limits

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.fixture(scope="module")
def run(tiny_run, one_thread):
    return load_run(tiny_run)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def serving(app: object, slow: SlowClientLimits | None = None) -> Iterator[int]:
    """Run `app` under a real uvicorn (the service's own slow-client settings) in a thread; yield its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    kwargs = (slow or SlowClientLimits()).uvicorn_kwargs()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **kwargs))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A local web server: counts requests; /redirect?to=URL answers 302, anything else a PNG."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _png()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def web_server() -> Iterator[tuple[int, list[str]]]:
    """Yield (port, requests seen) of a local web server on 127.0.0.1."""
    hits: list[str] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Recorder,), {"hits": hits}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def connections(monkeypatch) -> list[tuple[str, int]]:
    """Record every connection image_urls opens (it still opens them)."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def recording(address, *args, **kwargs):
        made.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(image_urls.socket, "create_connection", recording)
    return made


def test_health_answers_within_a_second_while_20_slow_requests_run(run, monkeypatch, tmp_path):
    real = run.score_uncached

    def slow(memes):
        time.sleep(0.3)  # a slow model: 20 requests queue for 6 s behind the one lock
        return real(memes)

    monkeypatch.setattr(run, "score_uncached", slow)
    (tmp_path / "a.png").write_bytes(_png())
    app = create_app(run, image_root=tmp_path, limits=Limits(deadline_s=2.0))
    with serving(app) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

        def predict(i: int) -> int:
            # /predict/batch once scored on the event loop itself, stalling every other request
            line = json.dumps({"id": i, "img": "a.png", "text": "when tourists never change"})
            return client.post("/predict/batch", content=line).status_code

        with ThreadPoolExecutor(20) as pool:
            statuses = pool.map(predict, range(20))
            time.sleep(0.5)  # the requests are in: the model is busy
            for _ in range(5):
                t0 = time.monotonic()
                assert client.get("/health", timeout=1.0).json() == {"status": "ok"}
                assert time.monotonic() - t0 < 1.0
                time.sleep(0.2)
            statuses = list(statuses)
    # Some finished in time; those still queued at 2 s got the deadline's 504 instead of waiting 6 s.
    assert statuses.count(200) >= 1 and statuses.count(504) >= 1 and set(statuses) <= {200, 504}


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:{port}/a.png", "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/"]
)
def test_urls_to_private_addresses_are_refused_before_connecting(url, connections):
    with web_server() as (port, hits):
        url = url.format(port=port)
        policy = UrlPolicy(frozenset({"127.0.0.1", "10.0.0.1", "169.254.169.254"}))
        with pytest.raises(UrlRefused, match="non-public"):
            image_urls.fetch(url, policy)
    assert connections == [] and hits == []


def test_a_name_that_resolves_to_loopback_is_refused(connections):
    with web_server() as (port, hits):
        policy = UrlPolicy(
            frozenset({"images.example"}), resolver=lambda host, port: [ipaddress.ip_address("127.0.0.1")]
        )
        with pytest.raises(UrlRefused, match="non-public"):
            image_urls.fetch(f"http://images.example:{port}/a.png", policy)
    assert connections == [] and hits == []


def test_every_redirect_hop_is_checked_and_the_checked_address_is_dialled(connections):
    with web_server() as (redirector, hits), web_server() as (target, target_hits):
        # Test-only hook: "redirector.test" (resolved to the local redirector) counts as public; nothing else does.
        policy = UrlPolicy(
            frozenset({"redirector.test", "127.0.0.1"}),
            resolver=lambda host, port: image_urls.resolve("127.0.0.1" if host == "redirector.test" else host, port),
            allowed=lambda host, ip: host == "redirector.test" or is_public(host, ip),
        )
        start = f"http://redirector.test:{redirector}/redirect?to="
        # The control: a redirect that stays on an allowed host is followed, over the address that was checked.
        png = image_urls.fetch(f"{start}http://redirector.test:{redirector}/img.png", policy)
        assert png == _png() and connections == [("127.0.0.1", redirector)] * 2
        with pytest.raises(UrlRefused, match="non-public"):
            image_urls.fetch(f"{start}http://127.0.0.1:{target}/secret", policy)
        with pytest.raises(UrlRefused, match="not on the --allow-url list"):
            image_urls.fetch(f"{start}http://elsewhere.example/a.png", policy)
        with pytest.raises(UrlRefused, match="redirects"):
            image_urls.fetch(f"{start}{start}{start}{start}{start}x", policy)
    assert target_hits == [] and len(connections) == 2 + 1 + 1 + 4  # the refused hops dialled nothing


def test_the_service_refuses_urls_with_422_and_a_generic_error(run, connections, caplog):
    with web_server() as (port, hits):
        lines = [
            {"id": i, "img": url, "text": "hello"}
            for i, url in enumerate(
                [f"http://127.0.0.1:{port}/a.png", "http://10.0.0.1/a.png", "http://169.254.169.254/latest/meta-data/"]
            )
        ]
        body = "\n".join(json.dumps(line) for line in lines).encode()
        closed = TestClient(create_app(run)).post("/predict/batch", content=body)
        policy = UrlPolicy(frozenset({"127.0.0.1", "10.0.0.1", "169.254.169.254"}))
        with caplog.at_level("WARNING", logger="fedmemes.tools.serve"):
            opened = TestClient(create_app(run, urls=policy)).post("/predict/batch", content=body)
    assert closed.status_code == 422 and all("--allow-url" in e["detail"] for e in closed.json()["errors"])
    assert opened.status_code == 422 and [e["line"] for e in opened.json()["errors"]] == [1, 2, 3]
    for error in opened.json()["errors"]:
        assert error["detail"].startswith("could not read the image URL (request ")
    assert "127.0.0.1" not in opened.text and "169.254" not in opened.text and "non-public" not in opened.text
    assert "non-public" in caplog.text and "169.254.169.254" in caplog.text  # the details are in the server log
    assert connections == [] and hits == []


def test_errors_to_callers_carry_no_exception_text_or_paths(run, tmp_path, caplog):
    root = tmp_path / "root"
    root.mkdir()
    (root / "broken.png").write_bytes(_png()[:60])  # a PNG header, then nothing: identified, cannot decode
    client = TestClient(create_app(run, image_root=root))
    with caplog.at_level("WARNING", logger="fedmemes.tools.serve"):
        one = client.post("/predict", data={"text": "hello"}, files={"image": ("a.png", _png()[:60])})
        batch = client.post("/predict/batch", content=json.dumps({"id": 1, "img": "broken.png", "text": "hi"}))
    for answer in (one, batch):
        assert answer.status_code == 422
        assert "could not read the image (request " in answer.text
        for leak in ("/tmp", str(tmp_path), "Error", "Traceback", "truncated"):
            assert leak not in answer.text
    assert "cannot decode" in caplog.text  # what went wrong is in the server log


def test_json_nested_100000_deep_is_a_422_and_a_one_line_issue(run, tmp_path):
    answer = TestClient(create_app(run)).post("/predict/batch", content=DEEP.encode())
    assert answer.status_code == 422
    assert answer.json()["errors"][0]["kind"] == "bad_json" and "nested deeper" in answer.json()["errors"][0]["detail"]
    path = tmp_path / "memes.jsonl"
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path.write_text(json.dumps({"id": 1, "img": "a.png", "text": "fine"}) + "\n" + DEEP + "\n")
    inputs = read_jsonl(path)
    assert [m.id for m in inputs.memes] == ["1"]
    (issue,) = inputs.issues
    assert issue.line == 2 and issue.kind == "bad_json" and "\n" not in str(issue) and str(path) in str(issue)


def test_a_slowloris_client_is_cut_off_at_the_header_deadline(run):
    with serving(create_app(run), SlowClientLimits(header_timeout_s=1.0)) as port:
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 100 + b"\r\n\r\n"
        closed = seconds_until_closed(port, request, every_s=0.25, give_up_s=6)  # 4 bytes a second: never finishes
        assert closed is not None and 0.9 <= closed <= 2.5
        with socket.create_connection(("127.0.0.1", port)) as idle:  # a connection that sends nothing
            idle.settimeout(5)
            t0 = time.monotonic()
            assert idle.recv(10) == b"" and time.monotonic() - t0 < 2.5
        # A client sending its headers at once is answered; 20 KiB of unfinished headers is refused (h11's limit).
        assert httpx.get(f"http://127.0.0.1:{port}/health").json() == {"status": "ok"}
        with socket.create_connection(("127.0.0.1", port)) as big:
            big.settimeout(5)
            big.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000)
            assert big.recv(12) == b"HTTP/1.1 400"
