"""`fedmemes certs DIR`: a CA, a server certificate and SuperNode keys for tests and small deployments."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"


@dataclass(frozen=True)
class TlsFiles:
    """The three files the SuperLink needs for TLS; nodes need only `ca`."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def in_dir(cls, folder: str | Path) -> TlsFiles:
        """Return the files `fedmemes certs` writes into `folder`, failing clearly if one is missing."""
        folder = Path(folder).expanduser().resolve()
        files = cls(folder / CA_CERT, folder / SERVER_CERT, folder / SERVER_KEY)
        missing = [str(p) for p in (files.ca, files.cert, files.key) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"TLS files missing: {', '.join(missing)}; run `fedmemes certs {folder}` or copy real ones there")
        return files


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key, fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)  # private keys: owner only


def make_tls(folder: Path, hosts: list[str], days: int = 365) -> TlsFiles:
    """Write ca.crt, ca.key, server.pem, server.key; the server certificate is valid for `hosts`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder().subject_name(_name("fedmemes CA")).issuer_name(_name("fedmemes CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / "ca.key", ca_key)
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / SERVER_KEY, key)
    return TlsFiles.in_dir(folder)


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """Write an EC (P-384) key pair in OpenSSH format for SuperNode authentication; return (private, public)."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    _write_key(private, key, serialization.PrivateFormat.OpenSSH)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def main(argv: list[str] | None = None) -> None:
    """Parse `fedmemes certs DIR [--host H ...] [--nodes N]` and write the files."""
    parser = argparse.ArgumentParser(prog="fedmemes certs", description="Make a CA, a server certificate and SuperNode keys.")
    parser.add_argument("dir", type=Path, help="folder to write into (created)")
    parser.add_argument("--host", action="append", help="name or IP the clients dial (repeatable; default localhost and 127.0.0.1)")
    parser.add_argument("--nodes", type=int, default=0, help="also make N SuperNode key pairs node-0.key/.pub ... for --enable-supernode-auth")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    files = make_tls(args.dir, args.host or ["localhost", "127.0.0.1"], args.days)
    keys = [make_node_key(args.dir, f"node-{i}") for i in range(args.nodes)]
    print(f"CA (give to every client): {files.ca}\nserver certificate: {files.cert}\nserver key (keep secret): {files.key}")
    for private, public in keys:
        print(f"SuperNode key: {private} (stays on the client)  public: {public} (register on the server)")
