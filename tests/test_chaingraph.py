"""The chain graph checks at apply time, on plain job definitions (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from natsched.chaingraph import check_chain_graph, find_cycle
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
