"""A lost run re-dispatched again, which its agent answers as taken before, is not run a third time.

A lost run of a ``redispatch_lost`` job is sent again with the same run id whenever a leader
closes the life it was lost in (each restart of its agent after it, a new leader): the agent
that ran it answers "taken by b1" and runs nothing. But the master noted that answer as a run
b1 had just accepted: when b1, restarted since, was later lost, the note was a run of its new
life with no event on record, and it was recorded lost and started a third time elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master import lost, openruns
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import agent_process, executions, recorded, seen_by, started_on, witnessed
from tests.helpers import apply, job, started_master, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_a_run_answered_as_taken_before_is_not_started_again_when_its_agent_is_lost(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lost, "RESTART_SETTLE", 2.0)  # the leader closes a previous life sooner
    monkeypatch.setattr(openruns, "SLACK", 0.5)  # one host, one clock: b1's runs before its restart
    witness, seconds = tmp_path / "witness", tmp_path / "seconds"
    seconds.write_text("30")
    url = nats_server.url

    def start(name: str, priority: int) -> Process:
        return agent_process(spawn, url, name, tmp_path / name, "--pool", "p", priority=priority)

    a1, b1 = start("a1", 1), start("b1", 2)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=3.0))
    try:
        assert master.dispatcher is not None
        directory = master.dispatcher.directory
        await seen_by(master, "a1", "b1")

        async def restart(process: Process, name: str, priority: int) -> Process:
            life = directory.last_seen[name][0].started_at
            process.kill()
            again = start(name, priority)
            await eventually(
                lambda: _new_life(directory.last_seen[name][0].started_at, life), 15, f"{name}'s new life"
            )
            return again

        spec = job(
            "long", mode="load-balance", targets={"pools": ["p"]}, command=witnessed(seconds, witness),
            redispatch_lost=True,
        )  # fmt: skip
        assert (await apply(nc, toml_jobs(spec, group="rd")))["ok"]
        [run] = (await trigger(nc, "rd.long"))["runs"]
        assert run["agent"] == "a1", run
        first, again = run["run_id"], f"{run['run_id']}-re"
        await eventually(lambda: recorded(nc, "rd.long", first, "started"), 10, "its started event")
        # The started event can come before the job's shell wrote its witness line: killed in
        # between (a busy machine), a1's copy left no line and the test saw one copy, not two.
        await eventually(lambda: started_on(witness, "a1"), 10, "a1's copy really started")
        seconds.write_text("0.2")
        a1 = await restart(a1, "a1", 1)  # the run dies with a1; it runs again on b1
        await eventually(lambda: _ran(witness, again, "b1"), 15, "the lost run ran again on b1, and ended")
        await asyncio.sleep(1.0)  # what b1 did in its first life is before its next life's SLACK
        b1 = await restart(b1, "b1", 2)
        await asyncio.sleep(3.0)  # the leader closed b1's previous life (nothing open)
        a1 = await restart(a1, "a1", 1)  # closing a1's previous life sends the lost run again

        async def answered() -> bool:
            return f"run {again} not started here: it was taken by agent b1" in b1.log.read_text()

        await eventually(answered, 10, "b1 answered the repeat (taken before)")
        b1.kill()  # lost 3 s later
        await asyncio.sleep(7.0)  # a third copy would have started on a1 by now
    finally:
        await master.__aexit__(None, None, None)
    copies = [
        line[:2] for line in executions(witness) if line[0].startswith(first) and line[2:] == ("start",)
    ]
    assert copies == [(first, "a1"), (again, "b1")], executions(witness)


async def _new_life(now: float, before: float) -> bool:
    return now != before


async def _ran(witness: Path, run_id: str, agent: str) -> bool:
    return (run_id, agent, "end") in executions(witness)
