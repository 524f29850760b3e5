"""tests/xdist_plan.py: which tests share an xdist worker, and the slow units first (on hand-built items)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from xdist_plan import group_of, pytest_collection_modifyitems


@dataclass
class FakeItem:
    """The little of a pytest.Item the plan reads: node id, fixtures with their scopes, marks."""

    nodeid: str
    scopes: dict[str, str] = field(default_factory=dict)
    marks: list[Any] = field(default_factory=list)

    @property
    def fixturenames(self) -> list[str]:
        return list(self.scopes)

    @property
    def _fixtureinfo(self) -> SimpleNamespace:
        defs = {n: [SimpleNamespace(argname=n, scope=s)] for n, s in self.scopes.items()}
        return SimpleNamespace(name2fixturedefs=defs)

    def get_closest_marker(self, name: str) -> Any:
        return next((m for m in self.marks if m.name == name), None)

    def add_marker(self, mark: Any) -> None:
        self.marks.append(mark.mark)


SLOW = pytest.mark.slow.mark


def test_tests_sharing_a_costly_fixture_share_a_group_and_the_rest_go_alone() -> None:
    run = FakeItem("tests/test_a.py::test_reads_run", {"simulated_run": "session", "tmp_path": "function"})
    bundle = FakeItem("tests/test_b.py::test_x[1]", {"bundle": "module"})
    threads = FakeItem("tests/test_c.py::test_y", {"one_thread": "module", "tmp_path": "function"})
    alone = FakeItem("tests/test_c.py::test_z", {"tiny_data": "session"})
    ray = FakeItem("tests/test_dashboard.py::test_live", {"tmp_path": "function"}, [SLOW])
    deploy = FakeItem("tests/test_deploy_faults.py::test_killed", {"tmp_path": "function"}, [SLOW])
    assert group_of(run) == group_of(ray) == "ray"  # one Ray starting at a time
    assert group_of(deploy) == "deploy"  # one federation of processes at a time
    assert group_of(bundle) == "tests/test_b.py"
    assert group_of(threads) is None and group_of(alone) is None


def test_units_holding_a_slow_test_come_first_and_the_order_is_otherwise_kept() -> None:
    fast1 = FakeItem("tests/test_a.py::test_fast")
    grouped_fast = FakeItem("tests/test_b.py::test_fast", {"bundle": "module"})
    fast2 = FakeItem("tests/test_c.py::test_fast")
    slow = FakeItem("tests/test_d.py::test_slow", marks=[SLOW])
    grouped_slow = FakeItem("tests/test_b.py::test_slow", {"bundle": "module"}, [SLOW])
    items = [fast1, grouped_fast, fast2, slow, grouped_slow]
    pytest_collection_modifyitems(items)
    # test_b's fast test rides with its slow sibling: one unit, handed out early, its fixture built once.
    assert items == [grouped_fast, slow, grouped_slow, fast1, fast2]
    assert [m.args for m in grouped_fast.marks if m.name == "xdist_group"] == [("tests/test_b.py",)]
    assert not any(m.name == "xdist_group" for m in fast1.marks + slow.marks)
