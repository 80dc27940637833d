"""An agent whose heartbeat this master cannot read is not judged lost while it heartbeats.

Before marking a silent agent down, the leader reads its heartbeat from the bucket; one it
could not decode counted as none. An agent upgraded first in a rolling upgrade heartbeats in a
protocol the masters do not speak yet (``VersionError``): the leader marked it lost while it
ran its jobs, and a ``redispatch_lost`` run started again on another agent. Here a1 is frozen
(its job runs on) while its key receives a newer protocol's heartbeats, as an upgraded a1
would write them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from nats.aio.client import Client

from natsched import PROTOCOL_VERSION, subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    frozen,
    lost_job,
    pool_pair,
    recorded,
    run_on_a1,
    seen_by,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults


async def test_an_agent_heartbeating_in_a_newer_protocol_is_not_judged_lost(
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
    try:
        await seen_by(master, "a1", "b1")
        spec = lost_job("long", witness, 12)
        run = await run_on_a1(nc, spec, "uh")
        await eventually(lambda: recorded(nc, "uh.long", run["run_id"], "started"), 10, "its started event")
        agents = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
        newer = msgpack.packb({"v": PROTOCOL_VERSION + 1, "agent": "a1", "load": {"1m": 0.1}})
        with frozen(a1):  # its job runs on; its key holds what an upgraded a1 writes
            for _ in range(10):  # 5 s: two and a half times the unresponsive period
                await agents.put("a1", newer)
                await asyncio.sleep(0.5)
            # Judged now, before a1 wakes (it then stops: its name changed hands meanwhile).
            states = [e["state"] for e in await events_of(nc, "uh.long") if e["run_id"] == run["run_id"]]
            ran = executions(witness)
    finally:
        await master.__aexit__(None, None, None)
    assert ran == [(run["run_id"], "a1", "start")], ran
    assert "lost" not in states, states
