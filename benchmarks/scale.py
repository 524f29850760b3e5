"""Many simulated clients: seconds per round next to bare Flower, peak memory, bytes per client.

    python benchmarks/scale.py --clients 1000 --per-round 20 [--rounds 5] [hydra overrides]

In one run: (1) `fedmemes simulate num_clients=N clients_per_round=K` in a subprocess,
(2) bare Flower (FedAvg sampling K of N, a ClientApp that returns the arrays it got, the same
model-sized arrays, the same client_resources) in a subprocess, (3) the clients' own work: K
sampled clients trained one after another in this process, exactly as the ClientApp does,
divided by the number of concurrent actors. Peak RSS is read from /proc (VmHWM) of the driver
and of every Ray ClientAppActor process while they run (Linux only). Caveat: every ClientAppActor on
the machine is counted, so run nothing else that uses Ray meanwhile (actor count and sums, and
the actors the clients' own work is divided by, come from that scan).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _peak_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss(threading.Thread):
    """Poll /proc: the driver's peak RSS and each Ray client actor's, until stopped."""

    def __init__(self, driver: int) -> None:
        super().__init__(daemon=True)
        self.driver, self.driver_kib, self.actors = driver, 0, {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.driver_kib = max(self.driver_kib, _peak_kib(self.driver))
            for proc in Path("/proc").iterdir():
                if proc.name.isdigit():
                    try:
                        cmd = (proc / "cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"ClientAppActor" in cmd:  # Ray names the worker process after its actor class
                        self.actors[int(proc.name)] = max(self.actors.get(int(proc.name), 0), _peak_kib(int(proc.name)))
            self.done.wait(0.5)


def _watched(cmd: list[str], env: dict[str, str], tries: int = 3) -> tuple[float, PeakRss]:
    for attempt in range(1, tries + 1):
        start = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        watch = PeakRss(proc.pid)
        watch.start()
        _, err = proc.communicate()
        watch.done.set()
        watch.join()
        if not proc.returncode:
            return time.monotonic() - start, watch
        # Ray gives a new node 30 s to register (hard-coded); on a saturated machine that can run out.
        if "timed out during startup" not in err or attempt == tries:
            raise SystemExit(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{err[-3000:]}")
        print(f"Ray did not start in time (attempt {attempt}); retrying", file=sys.stderr)
    raise AssertionError("unreachable")


def bare(clients: int, per_round: int, rounds: int, overrides: str, out: str, address: str | None = None) -> None:
    """Run bare Flower (child process): FedAvg sampling per_round of clients, a ClientApp that echoes the arrays."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedmemes.config import build_model, load_config
    from fedmemes.federation import engine

    cfg = load_config(overrides)
    arrays = ArrayRecord(engine.trainable_state(build_model(cfg)))  # the same payload our clients receive and send
    client, server, stamps = ClientApp(), ServerApp(), []

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({"num-examples": 1})
        return Message(RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=per_round / clients,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=per_round,
        )
        strategy.start(
            grid=grid,
            initial_arrays=arrays,
            num_rounds=rounds,
            evaluate_fn=lambda rnd, arr: stamps.append(time.monotonic()) or None,
        )

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": cfg.simulation.client_cpus, "num_gpus": 0.0},
            "init_args": {
                "logging_level": "ERROR",
                "log_to_driver": False,
                **({"address": address} if address else {}),
            },
        },
    )
    Path(out).write_text(json.dumps([b - a for a, b in itertools.pairwise(stamps)]))


def clients_work(overrides: str, clients: int, partitions: list[int]) -> list[float]:
    """Seconds each client of `partitions` takes to train, as the ClientApp does (its data from the on-disk caches)."""
    from hydra.utils import instantiate

    from fedmemes.config import build_model, load_config
    from fedmemes.federation import engine
    from fedmemes.federation.node_datasets import client_data

    cfg = load_config(overrides)
    device = engine.pick_device(cfg.device)
    seconds = []
    for pid in partitions:
        start = time.monotonic()
        data = client_data(overrides, pid, clients)
        model = build_model(cfg)
        engine.train(
            model,
            data.train.dataset(),
            epochs=cfg.num_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            device=device,
            seed=pid,
            optimizer=instantiate(cfg.optimizer),
            max_steps=cfg.local_steps,
            amp_dtype=engine.autocast_dtype(cfg.amp, device),
        )
        if len(data.val):
            engine.evaluate(model, data.val.dataset(), cfg.batch_size, device)
        engine.trainable_state(model)
        seconds.append(time.monotonic() - start)
    return seconds


def main() -> None:
    """Measure both runs and the clients' own work; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--ray-address",
        help="run both federations on this running Ray cluster (one node start-up "
        "instead of several: on a saturated machine Ray's 30 s start window can run out)",
    )
    # internal: run bare Flower, write timings to OUT
    parser.add_argument("--bare", metavar="OUT", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args()
    overrides = " ".join(
        [*extra, f"num_clients={args.clients}", f"clients_per_round={args.per_round}", f"num_rounds={args.rounds}"]
    )
    if args.bare:
        bare(args.clients, args.per_round, args.rounds, overrides, args.bare, args.ray_address)
        return

    from flwr.app import ArrayRecord

    from fedmemes.config import build_model, load_config
    from fedmemes.federation import engine

    run_dir = Path(tempfile.mkdtemp(prefix="scale-"))
    env = dict(os.environ)
    fedmemes = str(Path(sys.executable).parent / "fedmemes")
    cluster = [f"simulation.ray_address={args.ray_address}"] if args.ray_address else []
    ours_s, ours = _watched([fedmemes, "simulate", *overrides.split(), *cluster, f"hydra.run.dir={run_dir}"], env)
    rows = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    per_round = [b["seconds"] - a["seconds"] for a, b in itertools.pairwise(rows)]
    trained = [len(r.get("sampled", [])) for r in rows[1:]]

    bare_out = run_dir / "bare.json"
    bare_s, bare_watch = _watched(
        [
            sys.executable,
            __file__,
            "--bare",
            str(bare_out),
            f"--clients={args.clients}",
            f"--per-round={args.per_round}",
            f"--rounds={args.rounds}",
            *([f"--ray-address={args.ray_address}"] if args.ray_address else []),
            *extra,
        ],
        env,
    )
    bare_rounds = json.loads(bare_out.read_text())

    cfg = load_config(overrides)
    # the last round's clients: their caches are warm
    work = clients_work(overrides, args.clients, rows[-1]["partitions"])
    actors = max(1, len(ours.actors))
    train_per_round = sum(work) / min(actors, args.per_round)
    sent = ArrayRecord(engine.trainable_state(build_model(cfg))).count_bytes()

    steady, bare_steady = statistics.mean(per_round[1:] or per_round), statistics.mean(bare_rounds[1:] or bare_rounds)
    print(f"config: {overrides}; {actors} client actors; run dir {run_dir}")
    print("| | fedmemes | bare Flower |")
    print("|---|---:|---:|")
    print(f"| wall time, whole run (s) | {ours_s:.1f} | {bare_s:.1f} |")
    print(f"| round 1 (s) | {per_round[0]:.2f} | {bare_rounds[0]:.2f} |")
    print(f"| later rounds, mean (s) | {steady:.2f} | {bare_steady:.2f} |")
    print(f"| clients trained per round | {trained} | {args.per_round} (FedAvg fraction_train) |")
    print(f"| driver peak RSS (MiB) | {ours.driver_kib / 1024:.0f} | {bare_watch.driver_kib / 1024:.0f} |")
    print(
        f"| actor peak RSS, max / sum (MiB) | {max(ours.actors.values(), default=0) / 1024:.0f} / "
        f"{sum(ours.actors.values()) / 1024:.0f} | {max(bare_watch.actors.values(), default=0) / 1024:.0f} / "
        f"{sum(bare_watch.actors.values()) / 1024:.0f} |"
    )
    print(f"| bytes per client per round (down + up) | {2 * sent:,} | {2 * sent:,} |")
    print(
        f"clients' own work: {statistics.mean(work):.2f} s per client (data from cache, train, local val, pack), "
        f"{sum(work):.1f} s for {args.per_round} clients / {min(actors, args.per_round)} actors = "
        f"{train_per_round:.2f} s per round"
    )
    goal = 2 * (bare_steady + train_per_round)
    print(
        f"goal: later rounds <= 2 x (bare {bare_steady:.2f} + clients {train_per_round:.2f}) = {goal:.2f} s -> "
        f"{steady:.2f} s: {'met' if steady <= goal else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
