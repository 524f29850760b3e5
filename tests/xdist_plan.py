"""How `make test` spreads the tests over pytest-xdist workers (`-n N --dist loadgroup --no-loadscope-reorder`).

A test that uses a module- or class-scoped fixture runs in its file's group, so that fixture is built once. The tests
that start a Ray simulation (conftest's shared `simulated_run` among them) run in one group, one at a time: Ray gives
its node 30 s to start (hard-coded in ray/_private/node.py), and two starting side by side on 2 busy cores miss that.
The slow deploy tests (a SuperLink, SuperNodes, a ClientApp process per round each) also run one at a time, as they
did before xdist, so their deadlines hold; they mostly wait on Flower's heartbeats while the other workers compute.
Every other test goes alone to whichever worker is free. Units holding a slow test are handed out first: the long
deploy and multi-round runs start at once, and the many short tests fill the workers' tails. Without xdist the marks
are inert and only the order changes."""

from __future__ import annotations

import pytest

SHARED_RUN = "simulated_run"  # conftest's session fixture: one `fedmemes simulate` subprocess, ~25 s
RAY = "ray"
# The tests that start Ray themselves (a `fedmemes simulate` subprocess or a Ray cluster), by node-id prefix.
STARTS_RAY = (
    "tests/test_dashboard.py::",
    "tests/test_dp.py::test_simulate_",
    "tests/test_ray_cluster.py::",
    "tests/test_secagg_deploy.py::test_simulate_",
    "tests/test_site_policy_deploy.py::test_the_issues_simulation",
    "tests/test_sweep_runs.py::",
)
DEPLOY = "deploy"
STARTS_DEPLOYMENT = ("tests/test_deploy", "tests/test_secagg_deploy.py::", "tests/test_site_policy_deploy.py::")
FREE = frozenset({"one_thread"})  # module fixtures that cost nothing to build again on another worker


def group_of(item: pytest.Item) -> str | None:
    """Return the xdist group `item` must share, or None when it can run on any worker alone."""
    names = getattr(item, "fixturenames", ())
    if SHARED_RUN in names or (item.get_closest_marker("slow") and item.nodeid.startswith(STARTS_RAY)):
        return RAY
    if item.get_closest_marker("slow") and item.nodeid.startswith(STARTS_DEPLOYMENT):
        return DEPLOY
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else ()
    if any(d[-1].scope in ("module", "class", "package") and d[-1].argname not in FREE for d in defs if d):
        return item.nodeid.split("::", 1)[0]  # the file: its module fixtures are built once
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its group and move the units that hold a slow test to the front (stable otherwise)."""
    groups = {id(item): group_of(item) for item in items}
    slow_groups = {groups[id(i)] for i in items if i.get_closest_marker("slow") and groups[id(i)] is not None}
    for item in items:
        if groups[id(item)] is not None:
            item.add_marker(pytest.mark.xdist_group(groups[id(item)]))

    def rank(item: pytest.Item) -> int:
        group = groups[id(item)]
        return 0 if (group in slow_groups if group is not None else item.get_closest_marker("slow")) else 1

    items.sort(key=rank)  # every worker collects and sorts alike, as xdist requires
