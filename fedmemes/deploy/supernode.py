"""`fedmemes client`: start a Flower SuperNode whose ClientApp trains on a partition or on a local folder."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fedmemes.deploy.processes import bin_path, flower_env, free_port


def node_config(
    partition_id: int | None, num_partitions: int | None, data_dir: Path | None, policy: Path | None = None
) -> str:
    """Return the `--node-config` string the ClientApp reads: partition-id, num-partitions (+ data-dir, policy)."""
    # With --data-dir too: the number names the client in metrics.json and seeds its training.
    if partition_id is None and num_partitions is None:
        raise ValueError(
            "give --partition-id I --num-partitions N (with --data-dir DIR when the client has its own folder)"
        )
    if num_partitions is None:
        raise ValueError(f"--partition-id {partition_id} needs --num-partitions N too: how many clients there are")
    if partition_id is None:
        raise ValueError(f"--num-partitions {num_partitions} needs --partition-id I too: which one this client is")
    if num_partitions < 1:
        raise ValueError(f"--num-partitions {num_partitions} must be at least 1")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"--partition-id {partition_id} must be in [0, {num_partitions}): ids count from 0")
    config = f"partition-id={partition_id} num-partitions={num_partitions}"
    if data_dir is not None:  # read by the ClientApp when the server runs partition=per_client_dirs
        config += f' data-dir="{Path(data_dir).expanduser().resolve()}"'
    # the site policy the ClientApp enforces (fedmemes/privacy/site_policy.py); never sent anywhere
    if policy is not None:
        config += f' policy="{Path(policy).expanduser().resolve()}"'
    return config


def supernode_command(
    superlink: str,
    config: str,
    root_certificates: Path | None = None,
    auth_key: Path | None = None,
    clientappio_port: int | None = None,
) -> list[str]:
    """Return the `flower-supernode` command line; without a CA certificate the link is unencrypted."""
    cmd = [
        bin_path("flower-supernode"),
        "--superlink",
        superlink,
        "--node-config",
        config,
        # its local ClientApp API port: free by default so several clients can share one machine
        "--port",
        str(clientappio_port or free_port()),
    ]
    cmd += ["--root-certificates", str(Path(root_certificates).resolve())] if root_certificates else ["--insecure"]
    cmd += ["--auth-supernode-private-key", str(Path(auth_key).resolve())] if auth_key else []
    return cmd


def parser() -> argparse.ArgumentParser:
    """Return the `fedmemes client` argument parser (also used by `fedmemes manager`)."""
    p = argparse.ArgumentParser(
        prog="fedmemes client", description="Start a SuperNode that trains on this machine's memes."
    )
    p.add_argument("--superlink", required=True, help="the server's SuperLink as HOST:PORT")
    p.add_argument("--partition-id", type=int, help="this client's share of a partitioned source (0-based)")
    p.add_argument("--num-partitions", type=int, help="how many clients share the source")
    p.add_argument("--data-dir", type=Path, help="this client's own folder in the original layout (img/ + train.jsonl)")
    p.add_argument(
        "--root-certificates", type=Path, help="the server's CA certificate (ca.crt from `fedmemes certs`): TLS on"
    )
    p.add_argument(
        "--auth-key", type=Path, help="this node's private key when the server runs with server.supernode_auth=true"
    )
    p.add_argument("--flwr-home", type=Path, help="Flower's folder for this node (default: ~/.flwr)")
    p.add_argument(
        "--policy",
        type=Path,
        help="this site's policy (README 'Site policy'): allowed _target_s, limits, shared metrics; default: built-in",
    )
    p.add_argument("--check", action="store_true", help="print the policy with its defaults and sha256, then exit")
    return p


def check_policy(p: argparse.ArgumentParser, path: Path | None, show: bool) -> None:
    """Validate --policy now (argparse's exit 2 with one line), and print it under --check (then exit 0)."""
    from fedmemes.privacy import site_policy

    try:
        policy = site_policy.load(path) if path else site_policy.SitePolicy()
    except site_policy.PolicyError as err:
        p.error(str(err))
    if show:
        print(policy.described(path))
        raise SystemExit(0)


def check_address(superlink: str) -> None:
    """Refuse a --superlink without a port (Flower would dial a default the server does not use)."""
    host, colon, port = superlink.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--superlink {superlink}: give HOST:PORT, e.g. server.example.org:9092 (server.address)")


def check_paths(args: argparse.Namespace) -> None:
    """Refuse a --data-dir, --root-certificates or --auth-key that is not on this machine, naming the flag."""
    if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
        raise ValueError(f"--data-dir {args.data_dir}: no such folder (this client's own img/ + train.jsonl)")
    for flag, path, fix in (
        ("--root-certificates", args.root_certificates, "copy the server's ca.crt to this machine"),
        ("--auth-key", args.auth_key, "make it here with `fedmemes certs DIR --node-key NAME`"),
    ):
        if path is not None and not Path(path).expanduser().is_file():
            raise ValueError(f"{flag} {path}: no such file; {fix}")


def command_from_args(args: argparse.Namespace) -> list[str]:
    """Build the SuperNode command from parsed `fedmemes client` arguments."""
    check_address(args.superlink)
    config = node_config(args.partition_id, args.num_partitions, args.data_dir, args.policy)
    return supernode_command(args.superlink, config, args.root_certificates, args.auth_key)


def main(argv: list[str] | None = None) -> None:
    """Parse `fedmemes client ...`, report the device, then become the SuperNode process."""
    from fedmemes.federation import engine

    p = parser()
    args, overrides = p.parse_known_args(argv)
    if overrides:  # the run's Hydra config comes from the server; a client has nothing to override
        p.error(f"unknown arguments {overrides}; the run's settings are chosen on the server")
    check_policy(p, args.policy, args.check)
    try:
        cmd = command_from_args(args)
        check_paths(args)  # on this machine only: the deploy files' paths exist inside their containers
    except ValueError as err:
        p.error(str(err))
    print(f"Using device: {engine.pick_device('auto').type}", flush=True)  # what the seed's clients printed
    if args.root_certificates is None:
        print("warning: no --root-certificates: the link to the SuperLink is not encrypted", file=sys.stderr)
    home = args.flwr_home or Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    os.execvpe(cmd[0], cmd, flower_env(home))  # replace this process: signals reach the SuperNode directly
