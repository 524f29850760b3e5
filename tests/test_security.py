"""Trust-boundary pieces that need no federation: the SuperLink's public filter, plain-text refusals, secrets
kept from Flower's processes, key files created owner-only, and `fedmemes certs` that never replaces a CA silently."""

import asyncio
import os
import stat

import pytest
from cryptography import x509
from omegaconf import OmegaConf

from fedmemes.deploy import certs as certs_module
from fedmemes.deploy.certs import TlsFiles, check_loopback_name, make_node_key, make_tls
from fedmemes.deploy.gate import PublicFilter, public_paths
from fedmemes.deploy.processes import flower_env
from fedmemes.deploy.server import _check_exposure

CONTROL = 9093


def _call(app, path: str, server: tuple[str, int]) -> int:
    """Send one POST through `app` as if it came in on the socket `server`; return the status sent back."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "server": server}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


async def _flower(scope, receive, send):  # stands in for Flower's app: answers 200 to anything that reaches it
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_public_socket_passes_only_fleet_and_health_while_loopback_control_passes_all():
    gate = PublicFilter(_flower, CONTROL, public_paths())
    public, control = ("0.0.0.0", 9092), ("127.0.0.1", CONTROL)
    for path in ("/v1/fleet/pull-messages", "/v1/fleet/push-messages", "/v1/fleet/activate-node", "/health"):
        assert _call(gate, path, public) == 200, path
    for path in (
        "/v1/control/list-runs",
        "/v1/control/start-run",
        "/v1/control/stop-run",
        "/v1/control/register-node",
        "/v1/runtime/pull-task-input",
        "/docs",
        "/openapi.json",
        "/v1/fleet/../control/list-runs",
        "/v1/fleet",
        "/v1/fleet/pull-messages/",
        "//v1/control/list-runs",
        "/",
    ):
        assert _call(gate, path, public) == 403, path
        assert _call(gate, path, control) == 200, path
    # The control port on a non-loopback address (or an unknown socket) is treated as public.
    assert _call(gate, "/v1/control/list-runs", ("10.0.0.5", CONTROL)) == 403
    assert _call(gate, "/v1/control/list-runs", None) == 403


def test_flower_processes_never_see_the_token(monkeypatch, tmp_path):
    from fedmemes.deploy.auth import TOKEN_ENV

    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    env = flower_env(tmp_path)
    assert TOKEN_ENV not in env and "s3cret" not in env.values() and env["FLWR_HOME"] == str(tmp_path)


def _server_cfg(**server):
    base = {
        "address": "127.0.0.1:9092",
        "superlink": None,
        "certs": None,
        "insecure": False,
        "status_host": "127.0.0.1",
        "status_port": 8090,
    }
    return OmegaConf.create({"server": {**base, **server}})


def test_plain_text_beyond_loopback_needs_insecure():
    _check_exposure(_server_cfg())  # loopback: fine
    for bad in (
        {"address": "0.0.0.0:9092"},
        {"status_host": "0.0.0.0"},
        {"address": "[::]:9092"},
        {"address": "10.1.2.3:9092"},
    ):
        with pytest.raises(SystemExit, match="server.insecure=true"):
            _check_exposure(_server_cfg(**bad))
        _check_exposure(_server_cfg(**bad, insecure=True))
        _check_exposure(_server_cfg(**bad, certs="/certs"))
    _check_exposure(_server_cfg(status_host="0.0.0.0", status_port=None))  # no status API, nothing to refuse


def test_private_keys_are_created_owner_only(tmp_path):
    old = os.umask(0)  # even a permissive umask cannot widen them
    try:
        (tmp_path / "certs").mkdir()
        (tmp_path / "certs" / "server.key").write_text("old")
        os.chmod(tmp_path / "certs" / "server.key", 0o644)  # a stale, readable key is replaced, not reused
        make_tls(tmp_path / "certs", ["example.org"])
        _, public = make_node_key(tmp_path / "certs", "node-0")
    finally:
        os.umask(old)
    for key in ("ca.key", "server.key", "node-0.key"):
        assert stat.S_IMODE((tmp_path / "certs" / key).stat().st_mode) == 0o600, key
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")


def test_certs_keep_an_existing_ca_unless_forced_and_nodes_make_their_own_keys(tmp_path, capsys):
    folder = tmp_path / "certs"
    certs_module.main([str(folder), "--host", "server.example.org"])
    ca = (folder / "ca.crt").read_bytes()
    with pytest.raises(SystemExit) as done:
        certs_module.main([str(folder)])
    assert done.value.code == 2 and "--force" in capsys.readouterr().err and (folder / "ca.crt").read_bytes() == ca
    certs_module.main([str(folder), "--force"])
    assert (folder / "ca.crt").read_bytes() != ca
    # A client makes its own pair where it lives; only the .pub goes to the server. No CA is made there.
    certs_module.main([str(tmp_path / "client"), "--node-key", "alice"])
    assert sorted(p.name for p in (tmp_path / "client").iterdir()) == ["alice.key", "alice.pub"]
    with pytest.raises(SystemExit):
        certs_module.main([str(tmp_path / "client"), "--node-key", "alice"])  # an existing key is not replaced


def test_server_certificate_always_covers_loopback(tmp_path):
    files = make_tls(tmp_path / "a", ["server.example.org"])
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["server.example.org", "localhost"]
    check_loopback_name(files)
    # A certificate without 127.0.0.1 (e.g. a real one for the public name only) is refused with the fix.
    other = make_tls(tmp_path / "b", ["x"])
    other.cert.write_bytes(_cert_without_loopback(tmp_path))
    with pytest.raises(SystemExit, match="127.0.0.1"):
        check_loopback_name(TlsFiles(other.ca, other.cert, other.key))


def _cert_without_loopback(tmp_path) -> bytes:
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "server.example.org")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("server.example.org")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
