"""`fedmemes certs DIR`: a CA, a server certificate and SuperNode keys for tests and small deployments."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
LOOPBACK_NAMES = ["localhost", "127.0.0.1"]  # the server dials its own control port on loopback with this certificate


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
            raise FileNotFoundError(
                f"TLS files missing: {', '.join(missing)}; run `fedmemes certs {folder}` or copy real ones there"
            )
        return files


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(
    path: Path,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> None:
    """Write a private key that is owner-only from its first byte (created 0600, never chmod-ed after the fact)."""
    path.unlink(missing_ok=True)  # O_EXCL below: a replaced key never inherits the old file's mode
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))


def check_loopback_name(files: TlsFiles) -> None:
    """Fail with the fix unless the server certificate is valid for 127.0.0.1 (the control port's address)."""
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    try:
        ips = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.IPAddress
        )
    except x509.ExtensionNotFound:
        ips = []
    if ipaddress.ip_address("127.0.0.1") not in ips:
        raise SystemExit(
            f"error: {files.cert} is not valid for 127.0.0.1, where the server reaches its own SuperLink "
            "control port; add IP 127.0.0.1 to its subjectAltName (`fedmemes certs` always does)"
        )


def make_tls(folder: Path, hosts: list[str], days: int = 365, force: bool = False) -> TlsFiles:
    """Write ca.crt, ca.key, server.pem, server.key; the certificate is valid for `hosts` plus localhost/127.0.0.1.

    An existing CA is kept unless `force`: replacing it silently would lock out every client that trusts it.
    """
    existing = [str(folder / f) for f in (CA_CERT, CA_KEY) if (folder / f).exists()]
    if existing and not force:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; every client trusts that CA. Pass --force to replace "
            "it (then give clients the new ca.crt), or --node-key NAME alone to add a node key"
        )
    hosts = list(dict.fromkeys([*hosts, *LOOPBACK_NAMES]))
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("fedmemes CA"))
        .issuer_name(_name("fedmemes CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / CA_CERT).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / CA_KEY, ca_key)
    (folder / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(folder / SERVER_KEY, key)
    return TlsFiles.in_dir(folder)


def make_node_key(folder: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write an EC (P-384) key pair in OpenSSH format for SuperNode authentication; return (private, public)."""
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    if private.exists() and not force:
        raise FileExistsError(
            f"{private} already exists (its .pub may be registered on a server); pass --force to replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write_key(private, key, serialization.PrivateFormat.OpenSSH)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public


def main(argv: list[str] | None = None) -> None:
    """Parse `fedmemes certs DIR [--host H ...] [--nodes N] [--force]` or `fedmemes certs DIR --node-key NAME` and
    write."""
    parser = argparse.ArgumentParser(
        prog="fedmemes certs", description="Make a CA, a server certificate and SuperNode keys."
    )
    parser.add_argument("dir", type=Path, help="folder to write into (created)")
    parser.add_argument(
        "--host", action="append", help="name or IP the clients dial (repeatable; localhost and 127.0.0.1 always added)"
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="also make N SuperNode key pairs node-0.key/.pub ... for --enable-supernode-auth",
    )
    parser.add_argument(
        "--node-key",
        action="append",
        metavar="NAME",
        help="on a client: make only this node's key pair NAME.key/NAME.pub (no CA); send just the .pub to the server",
    )
    parser.add_argument(
        "--force", action="store_true", help="replace an existing CA (clients must then get the new ca.crt)"
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    if args.node_key and (args.host or args.nodes):
        parser.error("--node-key makes a client's key pair only; run --host/--nodes on the server separately")
    if args.dir.exists() and not args.dir.is_dir():
        parser.error(f"{args.dir} is a file, not a folder: DIR is the folder the keys and certificates go into")
    if args.nodes < 0:
        parser.error(f"--nodes {args.nodes}: give how many node key pairs to make, 0 or more")
    if args.days < 1:
        parser.error(f"--days {args.days}: the certificates must stay valid at least 1 day")
    try:
        if args.node_key:
            keys = [make_node_key(args.dir, name, args.force) for name in args.node_key]
        else:
            files = make_tls(args.dir, args.host or [], args.days, args.force)
            keys = [make_node_key(args.dir, f"node-{i}", args.force) for i in range(args.nodes)]
    except FileExistsError as err:
        parser.error(str(err))
    if not args.node_key:
        print(
            f"CA (give to every client): {files.ca}\nserver certificate: {files.cert}\nserver key (keep secret): "
            f"{files.key}"
        )
    for private, public in keys:
        print(f"SuperNode key: {private} (stays on the client)  public: {public} (register on the server)")
