"""The chain graph checks at apply time, on plain job definitions (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from natsched.chaingraph import check_chain_change, check_chain_graph, event_triggers, find_cycle
from natsched.errors import SpecError
from natsched.jobspec import parse_job
from natsched.models import JobSpec


def graph(**after: list[str] | None) -> dict[str, JobSpec]:
    jobs = {}
    for name, upstream in after.items():
        data: dict[str, Any] = {"name": name, "group": "g", "command": ["true"], "targets": {"agents": ["*"]}}
        if upstream:
            data["triggers"] = [{"after": upstream, "wait": "all"}]
        jobs[f"g.{name}"] = parse_job(data)
    return jobs


def test_a_diamond_fan_in_is_accepted() -> None:
    check_chain_graph(graph(root=None, left=["root"], right=["root"], join=["left", "right"]))


def test_a_long_chain_of_diamonds_is_checked_quickly() -> None:
    jobs: dict[str, list[str] | None] = {"n0": None}
    for i in range(1, 60):  # without memoised roots this is 2^60 paths
        jobs[f"a{i}"] = [f"n{i - 1}"]
        jobs[f"b{i}"] = [f"n{i - 1}"]
        jobs[f"n{i}"] = [f"a{i}", f"b{i}"]
    check_chain_graph(graph(**jobs))


def test_cycles_are_named_along_their_path() -> None:
    assert find_cycle(graph(a=["c"], b=["a"], c=["b"], d=None)) == ["g.a", "g.b", "g.c", "g.a"]
    with pytest.raises(SpecError, match="cycle: g.a -> g.b -> g.a"):
        check_chain_graph(graph(a=["b"], b=["a"]))


def test_fan_in_without_a_common_root_can_never_fire() -> None:
    with pytest.raises(SpecError, match="can never fire"):
        check_chain_graph(graph(x=None, y=None, z=["x", "y"]))


class Watched(dict[str, JobSpec]):
    """A graph that remembers which jobs a check looked at."""

    read: set[str]

    def __getitem__(self, key: str) -> JobSpec:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


def check_change(before: dict[str, JobSpec], after: dict[str, JobSpec]) -> set[str]:
    """check_chain_change from ``before`` to ``after``; returns the keys it read."""
    dependents: dict[str, set[str]] = {}
    for key, spec in before.items():
        for upstream in {u for t in event_triggers(spec) for u in t.after}:
            dependents.setdefault(upstream, set()).add(key)
    changed = {k for k in after if before.get(k) is not after[k]}
    watched = Watched(after)
    watched.read = set()
    check_chain_change(watched, changed, set(before) - set(after), lambda k: dependents.get(k, set()))
    return watched.read


DIAMOND = graph(root=None, left=["root"], right=["root"], join=["left", "right"])
OTHERS = graph(**{f"o{i}": [f"o{i - 1}"] if i else None for i in range(1000)})


def test_a_change_is_checked_where_it_can_break_the_graph() -> None:
    before = {**DIAMOND, **OTHERS}
    with pytest.raises(SpecError, match="can never fire"):  # join's upstreams lose their common root
        check_change(before, {**before, **graph(right=None)})
    with pytest.raises(SpecError, match="cycle"):
        check_change(before, {**before, **graph(root=["join"])})
    without_root = {k: v for k, v in before.items() if k != "g.root"}
    with pytest.raises(SpecError, match="'g.root', which is not a job"):
        check_change(before, without_root)


def test_a_valid_change_reads_only_the_jobs_it_touches() -> None:
    before = {**DIAMOND, **OTHERS}
    read = check_change(before, {**before, **graph(left=["root"], extra=["left"])})
    assert read <= set(DIAMOND) | {"g.extra"} and "g.o500" not in read
