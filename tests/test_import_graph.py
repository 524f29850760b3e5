"""The import graph: no cycles in the package, no private names borrowed across modules (ARCHITECTURE.md, "Layers")."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import fedmemes

PACKAGE = Path(fedmemes.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """Return the module that defines `name` (`fedmemes.a.b.Class` -> `fedmemes.a.b`), or None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[str]:
    """Every fedmemes.* name imported anywhere in the module, except under `if TYPE_CHECKING:`."""
    # Function-local (lazy) imports count: they defer an import's cost (torch, Ray, Flower stay off
    # `fedmemes --help`), not the dependency. A cycle through one is still two modules that each need
    # the other, and it becomes an ImportError the day someone moves the import to the top.
    found: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)  # typing-only imports never run
            continue
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"relative import at line {node.lineno}: write `from fedmemes... import ...`")
        stack.extend(ast.iter_child_nodes(node))
    return [name for name in found if name.split(".")[0] == "fedmemes"]


def import_graph() -> dict[str, set[str]]:
    """Return module -> the fedmemes modules it imports (a package's __init__ is its own node)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported in _imports(ast.parse(path.read_text(), str(path))):
            owner = _owner(imported, modules)
            if owner is not None and owner != name:
                graph[name].add(owner)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one shortest cycle as [a, b, ..., a], or None when the graph has none."""
    best: list[str] | None = None
    for start in sorted(graph):
        parents: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            for nxt in sorted(graph[node]):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    cycle = [start, *reversed(path[:-1]), start]
                    if best is None or len(cycle) < len(best):
                        best = cycle
                    queue.clear()
                    break
                if nxt not in parents:
                    parents[nxt] = node
                    queue.append(nxt)
    return best


def test_the_package_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        f"import cycle: {' -> '.join(cycle or [])}. Move what both modules need into a third "
        "module that imports neither (e.g. fedmemes/bookkeeping/run_steps.py, strategies/strategy_utils.py)"
    )


def test_the_graph_sees_top_level_and_lazy_imports() -> None:
    graph = import_graph()
    assert "fedmemes.bookkeeping.run_steps" in graph["fedmemes.deploy.server"]  # top-level import
    assert "fedmemes.deploy.server" in graph["fedmemes.cli"]  # function-local import in cli.server()


def test_find_cycle_names_the_shortest_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c", "a"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == ["x", "y", "z", "x"]


def test_no_module_imports_another_modules_private_names() -> None:
    # A leading underscore means "only this module uses it": a name two modules need is public (run_steps.py,
    # strategies/strategy_utils.py). Flower's own privates change without notice between releases.
    roots = (PACKAGE, PACKAGE.parent / "benchmarks")
    found = []
    for path in (p for root in roots if root.is_dir() for p in sorted(root.rglob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("fedmemes", "flwr"):
                found += [
                    f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert found == [], "private names imported across modules (make them public where they live):\n" + "\n".join(found)


# The layout (docs/architecture.md): only the boundary sits at the top, every other module in the folder of its role.
TOP_LEVEL = ("__init__.py", "cli.py", "config.py", "config_schema.py")
# Folders that know nothing of Flower or Hydra: besides each other they use only the crash-safe file writer.
PURE = ("fedmemes.models", "fedmemes.data", "fedmemes.tracking")
PURE_MAY_USE = ("fedmemes.bookkeeping.private_files",)


def _under(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in packages)


def test_only_the_boundary_modules_sit_at_the_top_of_the_package() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL)
    assert loose == [], (
        f"fedmemes/{', fedmemes/'.join(loose)} outside a subpackage: move each into the folder of its role "
        "(federation/, privacy/, bookkeeping/, tools/, data/, models/, ...; docs/architecture.md)"
    )


def test_every_package_says_what_it_holds() -> None:
    silent = sorted(
        str(init.relative_to(PACKAGE.parent))
        for init in PACKAGE.rglob("__init__.py")
        if not ast.get_docstring(ast.parse(init.read_text(), str(init)))
    )
    assert silent == [], f"packages without a docstring saying what they hold: {silent}"


def test_the_pure_folders_import_nothing_of_the_federated_side() -> None:
    graph = import_graph()
    found = sorted(
        f"{module} -> {imported}"
        for module, imports in graph.items()
        if _under(module, PURE)
        for imported in imports
        if not _under(imported, PURE + PURE_MAY_USE)
    )
    assert found == [], f"models/, data/ and tracking/ must stay free of Flower and Hydra code: {found}"
    assert [m for m, imports in graph.items() if "fedmemes.cli" in imports] == []  # the command line is the top


def test_under_tells_a_package_from_a_namesake() -> None:
    assert _under("fedmemes.data.meme", PURE) and not _under("fedmemes.database", PURE)
    assert _under("fedmemes.bookkeeping.private_files", PURE_MAY_USE)
    assert not _under("fedmemes.bookkeeping.run_config", PURE + PURE_MAY_USE)
