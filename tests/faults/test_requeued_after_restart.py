"""A run its restarted agent queued again is not lost, nor started a second time elsewhere.

An agent killed -9 with runs waiting their turn queues them again at its next start, with the
same run id (agent/recovery.py). Its new ``queued`` event has the same ``Nats-Msg-Id`` as the
first one (``<run>.queued``), so JetStream dropped it as a duplicate: the leader, closing what
the previous life left open 5 s after the restart, found the run's last event before the
restart, recorded it ``lost`` and, for a ``redispatch_lost`` job, started it again on another
agent, while the restarted agent still held it and ran it when its turn came: twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master import lost
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import events_of, executions, lost_job, pool_agent, pool_pair, recorded, seen_by
from tests.helpers import apply, started_master, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_a_run_queued_again_by_its_restarted_agent_is_neither_lost_nor_run_twice(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lost, "RESTART_SETTLE", 2.0)  # the leader closes a previous life sooner
    witness, seconds = tmp_path / "witness", tmp_path / "seconds"
    seconds.write_text("30")
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0))
    try:
        await seen_by(master, "a1", "b1")
        spec = lost_job("q", witness, seconds, overlap="queue")
        assert (await apply(nc, toml_jobs(spec, group="rq")))["ok"]
        runs = [(await trigger(nc, "rq.q"))["runs"][0] for _ in range(3)]
        assert [r["agent"] for r in runs] == ["a1"] * 3, runs  # one runs, two wait for the lock
        first, second, third = (r["run_id"] for r in runs)
        await eventually(lambda: recorded(nc, "rq.q", third, "queued"), 10, "the third run queued")
        await eventually(lambda: _started(witness, first), 10, "the first run executing")
        seconds.write_text("5")  # the second run, started after the restart, keeps the third waiting
        a1.kill()
        pool_agent(spawn, url, tmp_path, "a1")
        await eventually(lambda: _started(witness, second), 15, "a1 queued its runs again and ran one")
        await asyncio.sleep(3.5)  # the leader closes the previous life 2 s after it saw the new one
        seconds.write_text("0.2")
        await eventually(lambda: recorded(nc, "rq.q", third, "succeeded"), 30, "the third run ran")
        await asyncio.sleep(2.0)  # a copy of it started elsewhere would have run by now
        states = {(e["run_id"], e["state"]) for e in await events_of(nc, "rq.q")}
    finally:
        await master.__aexit__(None, None, None)
    starts = [line[0] for line in executions(witness) if line[2:] == ("start",)]
    copies = [run for run in starts if run.startswith(third)]
    assert copies == [third], executions(witness)
    assert (third, "lost") not in states, "a run its agent still held was recorded lost"


async def _started(witness: Path, run_id: str) -> bool:
    return any(line[0] == run_id and line[2:] == ("start",) for line in executions(witness))
