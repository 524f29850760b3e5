"""Every third-party package that fedmemes/, benchmarks/ or tests/ import is declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("fedmemes", "benchmarks", "tests")


def _normalise(name: str) -> str:
    """Return a distribution name in PEP 503 form (`PyYAML` -> `pyyaml`, `flwr_datasets` -> `flwr-datasets`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    """Return the distributions pyproject.toml declares: dependencies and every optional extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for extra in project["optional-dependencies"].values() for s in extra]
    return {_normalise(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}  # the name before extras/pins


def _third_party_imports() -> dict[str, str]:
    """Map each imported top-level module that is neither stdlib nor ours to the first file importing it."""
    local = {"fedmemes"} | {p.stem for folder in FOLDERS for p in (ROOT / folder).glob("*.py")}
    found: dict[str, str] = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_the_walk_finds_the_packages_that_only_arrived_through_others() -> None:
    imports = _third_party_imports()
    # The examples: imported directly, once installed only because flwr, fastapi and hydra pull them in.
    assert {"cryptography", "pydantic", "omegaconf", "yaml", "ray", "torch", "flwr"} <= set(imports)
    assert "os" not in imports and "fedmemes" not in imports and "run_helpers" not in imports


def test_every_imported_package_is_declared() -> None:
    declared, owners = _declared(), packages_distributions()
    undeclared = []
    for module, where in sorted(_third_party_imports().items()):
        dists = owners.get(module, [])
        if not any(_normalise(d) in declared for d in dists):
            undeclared.append(f"{where} imports {module!r} (distribution {dists or 'not installed'})")
    assert not undeclared, "add these to pyproject.toml [project] dependencies or an extra:\n" + "\n".join(undeclared)
