"""The chain graph: which jobs start on which jobs' completion, and the checks at apply time.

An edge ``U -> D`` exists when job D has an event trigger naming U in ``after``. Apply
refuses a set of jobs whose graph has a cycle (the cycle's path is named), an ``after``
naming a job that does not exist, or a ``wait = "all"`` whose upstreams can never belong
to one chain run (they have no common root, so their completions never meet).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from natsched.errors import SpecError
from natsched.models import JobSpec
from natsched.triggers.event import EventTrigger


def event_triggers(spec: JobSpec) -> Iterator[EventTrigger]:
    for trigger in spec.triggers:
        if isinstance(trigger, EventTrigger):
            yield trigger


def _upstreams(spec: JobSpec) -> list[str]:
    return sorted({key for trigger in event_triggers(spec) for key in trigger.after})


def find_cycle(jobs: Mapping[str, JobSpec]) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]`` (following ``after`` edges downstream), or None."""
    downstream: dict[str, list[str]] = {key: [] for key in jobs}
    for key, spec in jobs.items():
        for upstream in _upstreams(spec):
            if upstream in downstream:
                downstream[upstream].append(key)
    visiting: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(key: str) -> list[str] | None:
        state[key] = 1
        visiting.append(key)
        for child in sorted(downstream[key]):
            if state.get(child) == 1:
                return visiting[visiting.index(child) :] + [child]
            if child not in state:
                found = visit(child)
                if found:
                    return found
        visiting.pop()
        state[key] = 2
        return None

    for key in sorted(jobs):
        if key not in state:
            found = visit(key)
            if found:
                return found
    return None


def _roots(key: str, jobs: Mapping[str, JobSpec], memo: dict[str, frozenset[str]]) -> frozenset[str]:
    """Jobs with no upstream from which ``key`` can be reached (itself if it has none).

    Called after the cycle check, so the recursion ends; ``memo`` keeps diamonds linear.
    """
    if key not in memo:
        spec = jobs.get(key)
        ups = [u for u in _upstreams(spec) if u in jobs] if spec else []
        memo[key] = frozenset({key}) if not ups else frozenset().union(*(_roots(u, jobs, memo) for u in ups))
    return memo[key]


def check_chain_graph(jobs: Mapping[str, JobSpec]) -> None:
    """Raise SpecError (naming job and field) if the chain graph of ``jobs`` is unusable."""
    for key, spec in sorted(jobs.items()):
        for upstream in _upstreams(spec):
            if upstream not in jobs:
                raise SpecError(
                    f"names {upstream!r}, which is not a job (apply it in the same file or first)",
                    field="triggers.after",
                ).located(source="", job=key)
    cycle = find_cycle(jobs)
    if cycle:
        raise SpecError("the chain graph has a cycle: " + " -> ".join(cycle), field="triggers.after").located(
            source="", job=cycle[0]
        )
    memo: dict[str, frozenset[str]] = {}
    for key, spec in sorted(jobs.items()):
        for trigger in event_triggers(spec):
            if trigger.wait != "all" or len(trigger.after) < 2:
                continue
            common = frozenset.intersection(*(_roots(upstream, jobs, memo) for upstream in trigger.after))
            if not common:
                raise SpecError(
                    f"wait = 'all' on {', '.join(trigger.after)} can never fire: they share no upstream "
                    "job, so they never complete in one chain run",
                    field="triggers.wait",
                ).located(source="", job=key)


def check_chain_change(
    jobs: Mapping[str, JobSpec],
    changed: Iterable[str],
    removed: Iterable[str],
    dependents: Callable[[str], Iterable[str]],
) -> None:
    """``check_chain_graph(jobs)`` for a few changed or removed jobs of a graph that was valid.

    Only what a change can break is checked: the changed jobs, every job downstream of a
    changed or removed one, and their upstreams (for cycles and fan-in roots). ``jobs`` is
    the graph after the change; ``dependents(key)`` names the jobs that named ``key`` before
    it (the master's index), so 100k unchanged jobs are neither walked nor decoded.
    """
    changed = set(changed)
    named_by_changed: dict[str, set[str]] = {}  # the edges the change adds
    for key in changed:
        for upstream in _upstreams(jobs[key]) if key in jobs else ():
            named_by_changed.setdefault(upstream, set()).add(key)

    def downstream(key: str) -> Iterator[str]:
        for other in {*dependents(key), *named_by_changed.get(key, ())}:
            spec = jobs.get(other)
            if spec is not None and key in _upstreams(spec):
                yield other

    affected: set[str] = set()
    stack = [*changed, *removed]
    while stack:
        key = stack.pop()
        if key not in affected:
            affected.add(key)
            stack.extend(downstream(key))
    closure: set[str] = set()
    stack = [key for key in affected if key in jobs]
    while stack:
        key = stack.pop()
        if key not in closure:
            closure.add(key)
            stack.extend(upstream for upstream in _upstreams(jobs[key]) if upstream in jobs)
    check_chain_graph({key: jobs[key] for key in closure})
