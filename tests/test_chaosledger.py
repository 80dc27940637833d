"""The chaos run's accounting (bench/chaosledger.py): which slots count as silently missed, and
that each count can fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bench.chaosledger import AGENTS, GROUP, Healed, Ledger
from natsched.vocab import NO_AGENT

SLOT = 101.0  # the only slot checked in a window from 100 to 102


def started(
    run_id: str, job: str, agent: str, states: tuple[str, ...] = ("started", "succeeded")
) -> list[dict[str, Any]]:
    return [
        {"run_id": run_id, "job": job, "agent": agent, "state": state, "scheduled_at": SLOT, "at": SLOT}
        for state in states
    ]


def everything_but_the_slave_job() -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """Events and executions in which the mirror and load-balance jobs ran slot 101."""
    events: list[dict[str, Any]] = []
    executions: list[tuple[str, str, str]] = []
    for agent in AGENTS:
        events += started(f"m-{agent}", f"{GROUP}.mirror", agent)
        executions.append((f"{GROUP}.mirror", f"m-{agent}", agent))
    events += started("lb", f"{GROUP}.lb", "a2", ("started",))  # its success would want a chained run
    executions.append((f"{GROUP}.lb", "lb", "a2"))
    return events, executions


def slave_record(agent: str) -> dict[str, Any]:
    return {
        "run_id": f"s-{agent}",
        "job": f"{GROUP}.slave",
        "agent": agent,
        "state": "lost",
        "scheduled_at": SLOT,
    }


def test_a_slot_the_master_recorded_lost_before_any_agent_had_it_is_recorded_on_every_target() -> None:
    events, executions = everything_but_the_slave_job()
    ledger = Ledger([*events, slave_record(NO_AGENT)], executions, 100.0, 102.0)
    assert ledger.counts()["silent misses"] == 0, ledger.problems


def test_a_record_naming_one_agent_covers_that_agent_only() -> None:
    events, executions = everything_but_the_slave_job()
    ledger = Ledger([*events, slave_record("a1")], executions, 100.0, 102.0)
    assert ledger.counts()["silent misses"] == 2
    assert sorted(p for p in ledger.problems if "nothing recorded" in p) == [
        f"{GROUP}.slave slot 101 on a2: no run, nothing recorded",
        f"{GROUP}.slave slot 101 on a3: no run, nothing recorded",
    ]


def test_a_slot_nobody_ran_or_recorded_is_a_silent_miss_on_each_target() -> None:
    events, executions = everything_but_the_slave_job()
    ledger = Ledger(events, executions, 100.0, 102.0)
    assert ledger.counts()["silent misses"] == len(AGENTS)


# --- every count can fail: one defect planted in a clean record counts once, in its count only


def clean() -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """Slot 101 ran once on every target of every job, and the load-balance run's chain hop."""
    events: list[dict[str, Any]] = []
    executions: list[tuple[str, str, str]] = []
    for job in ("mirror", "slave"):
        for agent in AGENTS:
            events += started(f"{job}-{agent}", f"{GROUP}.{job}", agent)
            executions.append((f"{GROUP}.{job}", f"{job}-{agent}", agent))
    events += started("lb", f"{GROUP}.lb", "a2")
    executions.append((f"{GROUP}.lb", "lb", "a2"))
    events += hop("hop", "lb")
    executions.append((f"{GROUP}.chained", "hop", "a3"))
    return events, executions


def hop(run_id: str, parent: str) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "job": f"{GROUP}.chained",
            "agent": "a3",
            "state": state,
            "scheduled_at": None,
            "at": SLOT + 0.5,
            "detail": {"parents": parent},
        }
        for state in ("started", "succeeded")
    ]


def planted_runs_twice(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    executions.append((f"{GROUP}.mirror", "mirror-a1", "a1"))


def planted_second_run_of_a_slot(
    events: list[dict[str, Any]], executions: list[tuple[str, str, str]]
) -> None:
    events += started("slave-a1-again", f"{GROUP}.slave", "a1")
    executions.append((f"{GROUP}.slave", "slave-a1-again", "a1"))


def planted_run_of_no_slot(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events += [{**e, "scheduled_at": SLOT + 0.5} for e in started("slave-between", f"{GROUP}.slave", "a1")]
    executions.append((f"{GROUP}.slave", "slave-between", "a1"))


def planted_silent_miss(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events[:] = [e for e in events if e["run_id"] != "slave-a3"]
    executions.remove((f"{GROUP}.slave", "slave-a3", "a3"))


def planted_unrecorded_run(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    executions.append((f"{GROUP}.mirror", "nobody-said", "a1"))


def planted_success_that_never_ran(
    events: list[dict[str, Any]], executions: list[tuple[str, str, str]]
) -> None:
    events += started("slave-a1-said", f"{GROUP}.slave", "a1")


def planted_open_run(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events += started("slave-a1-open", f"{GROUP}.slave", "a1", ("started",))


def planted_missed_hop(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events[:] = [e for e in events if e["run_id"] != "hop"]
    executions.remove((f"{GROUP}.chained", "hop", "a3"))


def planted_second_hop(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events += hop("hop-again", "lb")
    executions.append((f"{GROUP}.chained", "hop-again", "a3"))


def planted_second_hop_after_the_window(
    events: list[dict[str, Any]], executions: list[tuple[str, str, str]]
) -> None:
    # A success after the window may meet the chained job disabled: no hop is no news, two are.
    late = {"scheduled_at": SLOT + 1, "at": SLOT + 1.5}
    events += [{**e, **late} for e in started("lb-late", f"{GROUP}.lb", "a1")]
    executions.append((f"{GROUP}.lb", "lb-late", "a1"))
    for run_id in ("hop-late", "hop-late-again"):
        events += hop(run_id, "lb-late")
        executions.append((f"{GROUP}.chained", run_id, "a3"))


def planted_hop_of_no_success(events: list[dict[str, Any]], executions: list[tuple[str, str, str]]) -> None:
    events += hop("hop-of-nothing", "lb-that-failed")
    executions.append((f"{GROUP}.chained", "hop-of-nothing", "a3"))


@pytest.mark.parametrize(
    ("plant", "count"),
    [
        (planted_runs_twice, "run ids executed twice"),
        (planted_second_run_of_a_slot, "slots executed by two runs"),
        (planted_run_of_no_slot, "executions of no due slot"),
        (planted_silent_miss, "silent misses"),
        (planted_unrecorded_run, "executions with no started event"),
        (planted_success_that_never_ran, "succeeded but never executed"),
        (planted_open_run, "runs left open"),
        (planted_missed_hop, "chain hops missed/doubled/unfounded"),
        (planted_second_hop, "chain hops missed/doubled/unfounded"),
        (planted_second_hop_after_the_window, "chain hops missed/doubled/unfounded"),
        (planted_hop_of_no_success, "chain hops missed/doubled/unfounded"),
    ],
)
def test_each_planted_defect_is_counted_once_in_its_own_count(
    plant: Callable[[list[dict[str, Any]], list[tuple[str, str, str]]], None], count: str
) -> None:
    events, executions = clean()
    assert not any(Ledger(events, executions, 100.0, 102.0).counts().values()), "the clean record counts 0"
    plant(events, executions)
    ledger = Ledger(events, executions, 100.0, 102.0)
    counts = ledger.counts()
    assert counts == {**dict.fromkeys(counts, 0), count: 1}, ledger.problems


def test_a_fault_not_done_or_never_healed_is_a_problem_but_a_refused_twin_is_not() -> None:
    assert Healed("kill_leader", "m1", None).problem
    assert Healed("kill_leader", "?", None, happened=False).problem
    assert not Healed("kill_leader", "m1", 1.2).problem
    assert not Healed("duplicate_agent", "a1", None).problem  # counted as an accepted twin instead
