"""The chaos run's accounting (bench/chaosledger.py): which slots count as silently missed."""

from __future__ import annotations

from typing import Any

from bench.chaosledger import AGENTS, GROUP, Ledger
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
