"""`fedmemes server`: start a SuperLink (or use a running one), submit the run, report rounds until it ends."""

from __future__ import annotations

import logging
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import hydra
import uvicorn
from omegaconf import DictConfig

from fedmemes.bookkeeping.run_dir import prepare
from fedmemes.bookkeeping.run_steps import (
    EXIT_DISK,
    check_data,
    disk_error_in,
    finish_command,
    job_overrides,
    quiet_libraries,
)
from fedmemes.deploy import processes
from fedmemes.deploy.auth import read_token
from fedmemes.deploy.certs import TlsFiles, check_loopback_name
from fedmemes.deploy.exposure import refuse_plain_text
from fedmemes.deploy.status_api import RunStatus, create_app, serve_in_thread
from fedmemes.deploy.superlink import SuperLink

log = logging.getLogger(__name__)


def _status_api(cfg: DictConfig, status: RunStatus, tls: TlsFiles | None) -> uvicorn.Server | None:
    if cfg.server.status_port is None:
        return None
    try:
        token = read_token(cfg.server.token_file)
    except ValueError as err:
        log.warning("status API: %s; heartbeats will be refused", err)
        token = secrets.token_urlsafe()  # nobody knows it: GET /status works, POST /heartbeat is refused
    server = serve_in_thread(create_app(status, token), cfg.server.status_host, int(cfg.server.status_port), tls)
    log.info(
        "status API: %s://%s:%s/status", "https" if tls else "http", cfg.server.status_host, cfg.server.status_port
    )
    return server


def _check_exposure(cfg: DictConfig) -> None:
    """Refuse plain text beyond loopback unless server.insecure=true; the control port is loopback by construction."""
    fix = "set server.certs=DIR (`fedmemes certs DIR --host NAME`), or server.insecure=true to accept plain text"
    encrypted, insecure = bool(cfg.server.certs), bool(cfg.server.get("insecure", False))
    try:
        if not cfg.server.superlink:
            refuse_plain_text(
                "server.address", processes.split_address(cfg.server.address)[0], encrypted, insecure, fix
            )
        if cfg.server.status_port is not None:
            refuse_plain_text("server.status_host", str(cfg.server.status_host), encrypted, insecure, fix)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


class RoundPrinter:
    """Print each hold-out round once as metrics.json grows, and keep the status API's run state current."""

    def __init__(self, status: RunStatus, num_rounds: int, superlink: subprocess.Popen[bytes] | None) -> None:
        self.status, self.num_rounds, self.superlink = status, num_rounds, superlink
        self.printed = {r["round"] for r in status.rounds()}  # a resumed run's earlier rounds were printed before

    def __call__(self, flower_status: str) -> None:
        if self.superlink is not None and self.superlink.poll() is not None:
            raise RuntimeError(f"the SuperLink exited with code {self.superlink.returncode}")
        self.status.state = flower_status
        for r in self.status.rounds():
            # rows without scores: server.eval_every skipped them
            if r["round"] not in self.printed and "accuracy" in r:
                self.printed.add(r["round"])
                log.info(
                    "round %d/%d | clients %s | hold-out AUROC %s  acc %.3f%s",
                    r["round"],
                    self.num_rounds,
                    r.get("clients"),
                    f"{r['auroc']:.3f}" if r.get("auroc") is not None else "n/a",
                    r["accuracy"],
                    " | no reply aggregated: the global model is unchanged" if r.get("kept_previous_model") else "",
                )
                for why in r.get("dropped", []):  # the clients' own words, escaped by the reply checks
                    log.warning("round %d: dropped reply from %s", r["round"], why)


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def server(cfg: DictConfig) -> None:
    """Serve one federated run to SuperNodes on other processes or machines; write the run directory."""
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries(cfg.verbose)
    # SIGTERM (docker stop, kill) must still run the `finally` below, which stops the SuperLink we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    prepare(run_dir, cfg)  # an earlier run's results are never overwritten; a resume must fit its checkpoint
    _check_exposure(cfg)
    log.info("%s", check_data(cfg, run_dir))  # bad data fails here, before any client waits
    tls = TlsFiles.in_dir(cfg.server.certs) if cfg.server.certs else None
    if tls is not None:
        check_loopback_name(tls)  # the server's own tools dial the control port as 127.0.0.1 with this certificate
    control = None if cfg.server.superlink else int(cfg.server.get("control_port", 9093))
    if control is not None and control == processes.split_address(cfg.server.address)[1]:
        raise SystemExit(
            f"error: server.control_port={control} is server.address's port; give the control port another one"
        )
    link = SuperLink(cfg.server.superlink or cfg.server.address, Path(cfg.server.flwr_home).resolve(), tls, control)
    status = RunStatus(run_dir, float(cfg.server.heartbeat_s))
    api = _status_api(cfg, status, tls)
    proc = None
    try:
        if not cfg.server.superlink:
            proc = link.start(node_auth=bool(cfg.server.supernode_auth))
            log.info(
                "SuperLink on %s (%s, Fleet API only; Control on %s); clients: fedmemes client --superlink HOST:%s ...",
                link.address,
                "TLS" if tls else "UNENCRYPTED",
                link.dial,
                link.address.rpartition(":")[2],
            )
        for key in cfg.server.authorized_keys:
            link.register(Path(key).expanduser().resolve())
        status.run_id = link.submit(job_overrides(run_dir))
        status.state = "pending"
        log.info(
            "run %s submitted; waiting for %s clients",
            status.run_id,
            cfg.server.strategy.get("min_available_nodes") or cfg.num_clients,
        )
        final = link.wait(status.run_id, RoundPrinter(status, int(cfg.num_rounds), proc))
        status.state = final
    finally:
        processes.stop(proc)
        if api is not None:
            api.should_exit = True
    if final != "finished:completed":
        if line := disk_error_in(link.details):  # the ServerApp's write failed: the same line and exit as simulate
            log.error("%s", line)
            raise SystemExit(EXIT_DISK)
        raise SystemExit(f"the run ended as {final}; Flower's log: {link.log_file}")
    finish_command(run_dir)  # exits non-zero when metrics.json says the run ended short
