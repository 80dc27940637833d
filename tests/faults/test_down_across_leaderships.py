"""An agent a master once marked down is judged afresh when that master leads again.

A leader marks a silent agent down once (its runs closed), and forgets that when it hears the
agent again. But it hears only while it leads: an agent that came back and died while another
master led was still "down" for the first master when it led again, and silence of a down
agent is not judged: the runs it started after coming back stayed open for ever. Here the
other leader is a lease written by the test (another master's, renewed while it lasts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import executions, frozen, pool_pair, recorded, run_on_a1, seen_by, witnessed
from tests.helpers import job, started_master
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_an_agent_down_before_another_master_led_is_judged_again(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=2.0))
    state = await nc.jetstream().key_value(subjects.STATE_BUCKET)
    try:
        assert master.lease is not None and master.lost is not None and master.dispatcher is not None
        lease, lost, directory = master.lease, master.lost, master.dispatcher.directory
        await seen_by(master, "a1", "b1")
        spec = job("long", mode="load-balance", targets={"pools": ["p"]}, command=witnessed(30, witness))
        first = await run_on_a1(nc, spec, "dl")
        with frozen(a1):
            await eventually(lambda: recorded(nc, "dl.long", first["run_id"], "lost"), 10, "a1 marked down")
            ghost = asyncio.create_task(_another_leader(state, lease.term + 1))
            await eventually(lambda: _not(lease.is_leader.is_set()), 10, "another master leads")
        try:  # a1 comes back, runs a new run and dies, all while the other master leads
            awake = time.monotonic()

            async def heard() -> bool:
                return directory.last_seen["a1"][1] > awake

            await eventually(heard, 10, "a1 heartbeats again")
            [second] = (await trigger(nc, "dl.long"))["runs"]
            assert second["agent"] == "a1", second
            await eventually(lambda: _started(witness, second["run_id"]), 10, "the new run executing")
            a1.kill()
        finally:
            ghost.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ghost
        assert "a1" in lost.down  # what this master knew when it last led
        await eventually(lambda: _yes(lease.is_leader.is_set()), 10, "this master leads again")
        await eventually(
            lambda: recorded(nc, "dl.long", second["run_id"], "lost"), 10, "the new run recorded lost"
        )
    finally:
        await master.__aexit__(None, None, None)


async def _another_leader(state: KeyValue, term: int) -> None:
    """Hold the lease as master ``ghost`` (renewed every 0.4 s) until cancelled."""
    while True:
        value = codec.pack({"master": "ghost", "term": term, "renewed": time.time()})
        await state.put(subjects.LEASE_KEY, value)
        await asyncio.sleep(0.4)


async def _not(value: bool) -> bool:
    return not value


async def _yes(value: bool) -> bool:
    return value


async def _started(witness: Path, run_id: str) -> bool:
    return (run_id, "a1", "start") in executions(witness)
