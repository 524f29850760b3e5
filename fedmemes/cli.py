"""`fedmemes` command line: subcommands dispatch to Hydra-configured jobs."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from fedmemes.bookkeeping.run_steps import (
    check_data,
    disk_errors_end_run,
    finish_command,
    job_overrides,
    quiet_libraries,
)
from fedmemes.bookkeeping.sweep_jobs import check_variants, is_multirun, job_exit_as_failure, sweeper_defaults
from fedmemes.config import OVERRIDES_ENV, compose_checked
from fedmemes.config_schema import ConfigError
from fedmemes.privacy import server_dp

# Named, not __name__: under `python -m fedmemes.cli` that is "__main__", outside the `fedmemes` logger
# whose INFO level (conf/hydra/job_logging/fedmemes.yaml) lets the run summary through.
log = logging.getLogger("fedmemes.cli")

USAGE = """usage: fedmemes COMMAND [hydra overrides]

commands:
  simulate   one-machine federated run (Flower simulation engine)
             e.g. fedmemes simulate num_rounds=5 num_clients=4 partition.alpha=0.3
             a sweep, one run folder per job: fedmemes simulate -m strategy=fedavg,fedprox random_seed=1,2,3
  data       make the synthetic memes: fedmemes data generate [overrides]
             see each client's share: fedmemes data inspect [overrides] (table + clients.png)
             write any source in the original layout: fedmemes data convert dataset=table dataset.root=F out=DIR
             captions from the pictures: fedmemes data ocr SRC [--lang eng] [--out FILE.jsonl]
  server     start a SuperLink, submit the run, follow it: fedmemes server [overrides]
             resume a stopped run: fedmemes server resume=RUN_DIR [same overrides]
  client     start a SuperNode: fedmemes client --superlink HOST:PORT --partition-id I --num-partitions N
             [--data-dir DIR] [--root-certificates ca.crt] [--auth-key node.key]   (--help for all)
  manager    client manager API beside a client: fedmemes manager --name a --status-url URL [client flags]
  certs      make a CA, a server certificate (and --nodes N keys): fedmemes certs DIR
  predict    score memes with a run's model: fedmemes predict RUN_DIR INPUT.jsonl|FOLDER [--out F.csv]
             or --text "..." --image PATH, or --run-split test (the run's own test split)
  serve      HTTP inference service: fedmemes serve RUN_DIR [--host 127.0.0.1] [--port 8095] (--help for all)
  runs       list runs, their config, scores and status: fedmemes runs [DIR]   (default outputs/)
             a sweep's table, mean ± std over seeds per swept setting: fedmemes runs SWEEP_DIR
  report     curves, test ROC/PR, clients, configs of runs: fedmemes report RUN_DIR [RUN_DIR ...] [--out DIR]

options: -v/--verbose shows Flower and Ray logs; --cfg job prints the composed config.
"""


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def simulate(cfg: DictConfig) -> float:
    """Run the whole federation on this machine with Flower's simulation engine; return the best hold-out (dev) AUROC,
    the objective of a sweep (`-m hydra/sweeper=optuna`): never test."""
    from hydra.core.hydra_config import HydraConfig

    from fedmemes.tools.run_scores import best_holdout_auroc, read_metrics

    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    with job_exit_as_failure(run_dir):  # in a sweep, a failed job lets the others run
        _simulate_job(cfg, run_dir)
    best = best_holdout_auroc(read_metrics(run_dir))
    return math.nan if best is None else best


def _simulate_job(cfg: DictConfig, run_dir: Path) -> None:
    """Check the data, run the federation into run_dir and print its summary; SystemExit on any failure."""
    from hydra.core.hydra_config import HydraConfig

    from fedmemes.bookkeeping.run_dir import prepare
    from fedmemes.federation.client_app import app as client_app
    from fedmemes.federation.server_app import app as server_app

    quiet_libraries(cfg.verbose)

    prepare(run_dir, cfg)  # an earlier run's results are never overwritten; a resume must fit its checkpoint
    # Validate data and every client's split here: bad input fails in seconds, before Ray starts.
    with disk_errors_end_run(run_dir):  # a full disk: one line and exit 5, never a traceback
        log.info("%s", check_data(cfg, run_dir, max_rows=40))  # clients.json holds every row
    os.environ[OVERRIDES_ENV] = job_overrides(run_dir)
    from fedmemes.deploy.simulation_status import SimulationStatus
    from fedmemes.federation.cluster import attach, ray_address

    # an existing cluster: Flower then skips its own ray.init
    if address := ray_address(cfg.simulation.get("ray_address")):
        attach(address, bool(cfg.verbose))
    live = SimulationStatus(cfg, run_dir, list(HydraConfig.get().overrides.task))  # dashboard: server.status_port=PORT

    with disk_errors_end_run(run_dir, say=False):  # the ServerApp logged the one line
        _simulate(cfg, server_app, client_app)
    finished = (run_dir / "metrics.json").exists() and json.loads((run_dir / "metrics.json").read_text()).get(
        "test"
    ) is not None
    live.end(finished)
    if not finished:
        raise SystemExit(f"the run did not finish; see {run_dir}/fedmemes.log (add -v for Flower's logs)")
    live.linger()
    finish_command(run_dir)  # exits non-zero when metrics.json says the run ended short


def _simulate(cfg: DictConfig, server_app: Any, client_app: Any) -> None:
    """Run Flower's simulation; a refusal the ServerApp makes itself (after a recipe is applied) ends in one line."""
    from flwr.simulation import run_simulation

    from fedmemes.bookkeeping.checkpoint_files import CheckpointDamaged
    from fedmemes.bookkeeping.resume_config import ResumeRefused
    from fedmemes.bookkeeping.run_config import RunConfigError

    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.num_clients,
            backend_config={
                "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": cfg.simulation.client_gpus},
                "init_args": {"logging_level": "INFO" if cfg.verbose else "ERROR", "log_to_driver": bool(cfg.verbose)},
            },
            verbose_logging=bool(cfg.verbose),
        )
    except (ResumeRefused, CheckpointDamaged, RunConfigError) as err:
        raise SystemExit(f"error: {err}") from None


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def data_generate(cfg: DictConfig) -> None:
    """Generate (or reuse) the configured data source and print its split sizes."""
    from fedmemes.federation.node_datasets import load_splits

    for split, memes in load_splits(cfg).items():
        print(f"{split:<10} {len(memes):>6} memes  {sum(m.label for m in memes):>6} hateful")


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def data_inspect(cfg: DictConfig) -> None:
    """Print every client's memes, labels and modalities; write clients.json and clients.png."""
    from hydra.core.hydra_config import HydraConfig

    print(check_data(cfg, Path(HydraConfig.get().runtime.output_dir).resolve()))


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def data_convert(cfg: DictConfig) -> None:
    """Write the configured source's memes in the original layout (img/ + <split>.jsonl) into the empty folder `out`."""
    from fedmemes.data.convert import write_original_layout
    from fedmemes.federation.node_datasets import load_source

    if not cfg.get("out"):
        raise SystemExit("error: name the new folder: fedmemes data convert dataset=... out=OUT")
    out = Path(str(cfg.out)).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # before reading a large source, not after
        raise SystemExit(f"error: {out} is not empty; give the converted copy a new folder")
    splits, issues = load_source(cfg)
    for split, n in write_original_layout(splits, out).items():
        print(f"{split:<10} {n:>6} memes -> {out / split}.jsonl")
    if issues:
        policy = cfg.dataset.get("on_error")
        print(f"{len(issues)} row(s) left out or kept partly (dataset.on_error={policy}); first: {issues[0]}")
    print(f"read it with: dataset=hateful_memes dataset.root={out}")


# `fedmemes <words> [overrides]` -> Hydra job. Add a command here and in USAGE.
def server() -> None:
    """Start a SuperLink (or use server.superlink), submit the run and follow it to its end."""
    from fedmemes.deploy.server import server as job

    job()


def _argparse_command(module: str) -> Callable[[], None]:
    # client/manager/certs take flags, not Hydra overrides; `-v` became verbose=true above.
    def run() -> None:
        import importlib

        importlib.import_module(module).main([a for a in sys.argv[1:] if a != "verbose=true"])

    return run


def _resume_dir(args: list[str]) -> list[str]:
    # resume=RUN_DIR continues in that directory: Hydra must not make a new one.
    resume = next((a.split("=", 1)[1] for a in args if a.startswith("resume=")), None)
    if not resume or resume == "null":
        return []
    from fedmemes.bookkeeping.run_config import run_folder_problem

    if problem := run_folder_problem(resume, need=None):  # named before Hydra would create the folder
        print(f"error: {problem} (resume={resume})", file=sys.stderr)
        raise SystemExit(2)
    if any(a.startswith("hydra.run.dir=") for a in args):
        return []
    return [f"hydra.run.dir={Path(resume).expanduser().resolve()}"]


# Hydra's flags that take a value; with one in HYDRA_OWN Hydra runs no job here (or reads configs we cannot
# locate: -cp is relative to the caller), so Hydra checks alone.
HYDRA_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "-cd", "--config-dir", "-cn", "--config-name"}
HYDRA_OWN = {
    "-cp",
    "--config-path",
    "-h",
    "--help",
    "--hydra-help",
    "-i",
    "--info",
    "--shell-completion",
    "-sc",
    "--version",
    "--experimental-rerun",
}


def check_overrides(args: list[str]) -> None:
    """Compose and check the overrides among `args` before any job starts; exit 2 with one line on a bad value."""
    if any(a.split("=", 1)[0] in HYDRA_OWN for a in args):
        return
    overrides, flags, flag = [], {}, None
    for a in args:
        if flag:
            flags[flag], flag = a, None
        elif a.startswith("-"):
            name, eq, value = a.partition("=")
            if eq:
                flags[name] = value
            elif name in HYDRA_VALUE_FLAGS:
                flag = name
        else:
            overrides.append(a)
    config_dir = flags.get("-cd") or flags.get("--config-dir")
    try:
        # a sweep (-m): every swept value is checked, one key at a time, before the first job starts
        for chosen in check_variants(overrides) if is_multirun(args) else [overrides]:
            cfg = compose_checked(
                chosen,
                flags.get("-cn") or flags.get("--config-name") or "config",
                str(Path(config_dir).expanduser()) if config_dir else None,
            )
            server_dp.check(cfg)  # a budget no accountant can keep; here, not in each client's compose: imports classes
            if not (flags.get("--cfg") or flags.get("-c")):  # printing the config may show what is left to fill in
                _check_required(cfg, chosen)
    except ValueError as e:  # a ConfigError or a malformed sweep; Ray, a SuperLink, the run folder are not started yet
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _check_required(cfg: DictConfig, overrides: list[str]) -> None:
    """Name a required key left at `???` (dataset.root after dataset=hateful_memes), and the choice that needs it."""
    from omegaconf import OmegaConf

    for key in sorted(OmegaConf.missing_keys(cfg)):
        parent, _, leaf = key.rpartition(".")
        if OmegaConf.is_interpolation(OmegaConf.select(cfg, parent) if parent else cfg, leaf):
            continue  # e.g. dataset.source.root: ${dataset.root}; the key it points at is named instead
        chosen = next((o for o in overrides if key.startswith(o.split("=", 1)[0].replace("/", ".") + ".")), None)
        needs = f"{chosen} needs one" if chosen else "this config needs one"
        example = "/abs/folder" if leaf in ("root", "name_or_path") else "VALUE"
        raise ConfigError(f"{key} has no value and {needs}: add {key}={example} to the command")


COMMANDS = {
    "simulate": simulate,
    "data generate": data_generate,
    "data inspect": data_inspect,
    "data convert": data_convert,
    "data ocr": _argparse_command("fedmemes.data.ocr_command"),
    "server": server,
    "client": _argparse_command("fedmemes.deploy.supernode"),
    "manager": _argparse_command("fedmemes.deploy.manager"),
    "certs": _argparse_command("fedmemes.deploy.certs"),
    "predict": _argparse_command("fedmemes.tools.predict"),
    "serve": _argparse_command("fedmemes.tools.serve"),
    "runs": _argparse_command("fedmemes.tools.list_runs"),
    "report": _argparse_command("fedmemes.tools.report.command"),
}
# they take overrides: checked first
HYDRA_COMMANDS = ("simulate", "data generate", "data inspect", "data convert", "server")


def main(argv: list[str] | None = None) -> None:
    """Dispatch `fedmemes COMMAND ...` (argv, default sys.argv[1:]) to the matching Hydra job."""
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = any(a in ("-v", "--verbose") for a in args)
    args = [a for a in args if a not in ("-v", "--verbose")] + (["verbose=true"] if verbose else [])
    args += _resume_dir(args) + sweeper_defaults(args)
    for name, job in COMMANDS.items():
        words = name.split()
        if args[: len(words)] == words:
            if name == "data convert":  # `out` is no config key: Hydra adds it with a leading +
                args = [f"+{a}" if a.startswith("out=") else a for a in args]
            if name in HYDRA_COMMANDS:
                check_overrides(args[len(words) :])
            sys.argv = [f"fedmemes {name}", *args[len(words) :]]
            job()
            return
    print(USAGE, file=sys.stderr)
    raise SystemExit(0 if args[:1] in (["-h"], ["--help"]) else 2)


if __name__ == "__main__":
    main()
