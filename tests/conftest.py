"""Fixtures every test file shares: an isolated cache, Flower's task identity, small configs, tiny data, a tiny run,
one real `fedmemes simulate` run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# One OpenMP thread in every test process and every process it starts (CLI runs, SuperNodes, each ClientApp, Ray
# actors), set before torch is first imported. `make test` runs 2 workers on 2 cores, each starting more processes;
# torch's default, a thread per core in each, only spins: one deployment's 4 ClientApp processes used 50 CPU-seconds
# with it and 35 without (tests/test_deploy.py, 2026-12-08).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from xdist_plan import pytest_collection_modifyitems  # noqa: F401  (a hook: pytest finds it here)

from fedmemes.config import load_config
from fedmemes.data.meme import Meme
from fedmemes.federation.testing import server_identity as _server_identity

# debug=tiny, smaller still (32 px, 360 memes): the model only has to move, not to be good.
TINY = "experiment=tiny_run"
# The one real `fedmemes simulate` the slow tests share: 3 clients on 2 actors with dropout and modality dropout
# (test_determinism reruns it and compares). These 3 clients learn debug=tiny's XOR at round 4 (hold-out AUROC 0.5 ->
# 0.98, 1.0 at round 5); 6 rounds leave a margin for test_simulation, and a round here costs ~1.5 s.
SIMULATE = ("debug=tiny", "num_clients=3", "num_rounds=6", "model.modality_dropout=0.3", "simulation.client_cpus=1")
# Every other `fedmemes simulate` a test starts runs its clients on one Ray actor: each actor imports torch, flwr and
# the data libraries (~5 s of CPU), and a tiny run on 2 actors cost 32-40 CPU-seconds against 24 on one, at the same
# wall time (2 cores, 2026-12-07). The CPU is what the other test worker (make test's TEST_WORKERS) waits for.
os.environ.setdefault("FEDMEMES_CLIENT_CPUS", str(min(2, os.cpu_count() or 1)))  # never more than the machine has


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the session's data and feature cache: generated memes and encoder features are made once per run."""
    return tmp_path_factory.mktemp("fedmemes-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every test, and every `fedmemes` child process it starts, writes under the session's tmp dir,
    # never into ~/.cache/fedmemes. A test that sets FEDMEMES_CACHE itself runs after this and wins.
    monkeypatch.setenv("FEDMEMES_CACHE", str(cache_dir))


@pytest.fixture
def server_identity() -> Iterator[None]:
    """Give the test the task identity Flower's runtime sets in a ServerApp process (Messages are stamped with it)."""
    with _server_identity():
        yield


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run torch on one thread for the module: tensors here are tiny, and on a busy 2-core box two threads spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class TinyData:
    """A generated tiny synthetic set: the overrides that select it, its folder (original layout) and its splits."""

    overrides: str
    folder: Path
    splits: dict[str, list[Meme]]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    """Generate the TINY synthetic memes once per session, in a cache folder of their own."""
    overrides = f"{TINY} cache_dir={tmp_path_factory.mktemp('tiny-data')}"
    source = instantiate(load_config(overrides).dataset.source)
    folder = source.ensure()
    return TinyData(overrides, folder, source.load())


@pytest.fixture
def small_config(tiny_data: TinyData) -> Callable[[str], DictConfig]:
    """Return a factory: the tiny preset on tiny_data's memes (TINY, cache pinned) plus the given overrides."""

    def compose(overrides: str = "") -> DictConfig:
        return load_config(f"{tiny_data.overrides} {overrides}")

    return compose


@pytest.fixture(scope="session")
def tiny_run(tiny_data: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return a finished run directory on tiny_data made through the server's own code, without Flower's loop."""
    from flwr.app import ArrayRecord

    from fedmemes.bookkeeping import private_files
    from fedmemes.federation import engine
    from fedmemes.federation.node_datasets import _tensors, holdout
    from fedmemes.federation.server_run import ServerRun

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_thread, for a session fixture
    try:
        cfg = load_config(tiny_data.overrides)
        run_dir = tmp_path_factory.mktemp("tiny-run")
        private_files.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))  # as server_app.main writes it
        run = ServerRun(cfg, tiny_data.overrides, run_dir)
        torch.manual_seed(0)
        pool = _tensors(cfg, holdout(cfg).pool)
        engine.train(run.model, pool.dataset(), epochs=10, lr=3e-3, batch_size=32, device=torch.device("cpu"))
        state = engine.trainable_state(run.model)
        run.evaluate(1, ArrayRecord(state))  # hold-out scoring, best round, checkpoint: the server's path
        run.finish(ArrayRecord(state))  # best/final models, threshold on dev, test scores
    finally:
        torch.set_num_threads(threads)
    return run_dir


def _simulate(run_dir: Path, overrides: tuple[str, ...], env: dict[str, str]) -> str:
    """Run `fedmemes simulate` in a subprocess as a person runs it; return its stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "fedmemes.cli", "simulate", *overrides, f"hydra.run.dir={run_dir}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@dataclass(frozen=True)
class SimulatedRun:
    """A finished `fedmemes simulate` run: its overrides, directory, stdout, and the environment it ran in."""

    overrides: tuple[str, ...]
    run_dir: Path
    stdout: str
    env: dict[str, str]

    def rerun(self, run_dir: Path) -> str:
        """Run the same overrides again, in the same environment, into run_dir; return its stdout."""
        return _simulate(run_dir, self.overrides, self.env)


@pytest.fixture(scope="session")
def simulated_run(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimulatedRun:
    """Run `fedmemes simulate` (SIMULATE) once per session as a person runs it; tests only read its directory."""
    # Set here, not by _isolated_cache: a session fixture is built before the function-scoped ones.
    env = {**os.environ, "FEDMEMES_CACHE": str(cache_dir)}
    run_dir = tmp_path_factory.mktemp("simulated") / "run"
    return SimulatedRun(SIMULATE, run_dir, _simulate(run_dir, SIMULATE, env), env)
