"""A restart the leader saw but had not closed yet is closed by the next leader.

The leader closes an agent's previous life 5 s after it sees the new one (lost.py), and keeps
each agent life it sees on record (``life.<agent>``, roster.py) so a leader that starts later
judges what it never heard. It wrote the new life over the previous one within 0.5 s, before
closing the previous one: a leader stopped within those 5 s (``systemctl restart`` of the
agent, then of the master, as an upgrade does) left a record that named only the new life, and
the next leader never knew of the previous one: a ``redispatch_lost`` run its agent's restart
ended was recorded lost (by the agent's journal) and never started again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from natsched import codec, subjects
from natsched.embedded import EmbeddedServer
from natsched.master import lost
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    lost_job,
    pool_agent,
    pool_pair,
    recorded,
    run_on_a1,
    seen_by,
    started_agents,
    started_on,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


async def test_a_restart_the_stopped_leader_had_not_closed_yet_is_closed_by_the_next(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The leader closes a previous life this long after it saw the new one: room for the steps
    # below on a loaded machine (the first leader must stop before it closes it).
    monkeypatch.setattr(lost, "RESTART_SETTLE", 8.0)
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0))
    try:
        await seen_by(master, "a1", "b1")
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "rm")
        await eventually(lambda: recorded(nc, "rm.long", run["run_id"], "started"), 10, "its started event")
        first_life = await _life_on_record(nc, "a1", None)
        a1.kill()
        pool_agent(spawn, url, tmp_path, "a1")
        await eventually(lambda: recorded(nc, "rm.long", run["run_id"], "lost"), 15, "a1 recorded it lost")
        await asyncio.sleep(1.0)  # the leader has seen the new life (its passes are 0.5 s apart)
    finally:
        await master.__aexit__(None, None, None)  # before it closes the previous life
    assert not await started_on(witness, "b1"), "closed before the leader stopped: no test"
    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0):
        await eventually(lambda: started_on(witness, "b1"), 20, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
        redone = [e for e in await events_of(nc, "rm.long") if e["trigger"] == RunTrigger.LOST.value]
        await eventually(lambda: _moved_on(nc, first_life), 10, "the new life on record once closed")
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
    assert {(e["agent"], e["detail"]["lost_run"]) for e in redone} == {("b1", run["run_id"])}, redone


async def _life_on_record(nc: Client, agent: str, other_than: float | None) -> float:
    """The start time of ``agent``'s life on record, once there is one (other than ``other_than``)."""
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    async with asyncio.timeout(10):
        while True:
            try:
                entry = await state.get(subjects.agent_life_key(agent))
                started = codec.decode_heartbeat(entry.value or b"", agent).started_at
                if started != other_than:
                    return started
            except KeyNotFoundError:
                pass
            await asyncio.sleep(0.05)


async def _moved_on(nc: Client, previous: float) -> bool:
    try:
        async with asyncio.timeout(0.5):
            await _life_on_record(nc, "a1", previous)
    except TimeoutError:
        return False
    return True
