"""Closing a restarted agent's previous life leaves the runs of its new life alone.

5 s after it sees an agent's new life, the leader closes what the previous life left open:
its events (each run's last one before the restart), its claims (made before the restart),
and the runs the agent accepted in its replies to this master with no event on record. Those
had no bound: a run the new life had just accepted, its ``started`` event still on its way
(milliseconds), was taken for one the previous life left open, recorded ``lost`` while it
ran, and, for a ``redispatch_lost`` job, started again on another agent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import events_of, executions, pool_agent, pool_pair, seen_by, witness_job
from tests.helpers import apply, started_master, toml_jobs

pytestmark = pytest.mark.faults


async def test_runs_the_new_life_accepted_are_not_closed_with_the_previous_one(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = pool_pair(spawn, url, tmp_path)
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=5.0))
    try:
        await seen_by(master, "a1", "b1")
        spec = witness_job(
            "quick", witness, mode="load-balance", targets={"pools": ["p"]}, redispatch_lost=True
        )
        assert (await apply(nc, toml_jobs(spec, group="nl")))["ok"]
        directory = master.dispatcher.directory if master.dispatcher else None
        assert directory is not None
        first_life = directory.last_seen["a1"][0].started_at
        a1.kill()  # nothing of it was going: whatever is recorded lost is a run of the new life
        pool_agent(spawn, url, tmp_path, "a1")

        async def new_life() -> bool:
            seen = directory.last_seen["a1"][0]
            return seen.started_at != first_life and directory.get("a1") is not None

        await eventually(new_life, 15, "the master sees a1's new life")
        noticed = time.monotonic()
        await asyncio.sleep(4.0)
        # Runs dispatched to the new life all through the leader's close of the previous one.
        runs = await _trigger_until(nc, "natsched.trigger.nl.quick", noticed + 7.0)
        await asyncio.sleep(2.0)  # a re-dispatched copy would have run by now
        events = await events_of(nc, "nl.quick")
    finally:
        await master.__aexit__(None, None, None)
    copies = Counter(line[0].removesuffix("-re") for line in executions(witness))
    assert all(count == 1 for count in copies.values()), [r for r, c in copies.items() if c > 1][:5]
    lost = [e for e in events if e["state"] == "lost"]
    assert not lost, lost[:3]
    on_a1 = sum(r["agent"] == "a1" for r in runs)
    assert on_a1 >= 20, f"{on_a1} of {len(runs)} runs went to the new life (priority 1)"


async def _trigger_until(nc: Client, subject: str, until: float) -> list[dict[str, object]]:
    """Start the job, four at a time, until ``until`` (monotonic); the runs started."""
    runs: list[dict[str, object]] = []

    async def one_after_another() -> None:
        while time.monotonic() < until:
            reply = json.loads((await nc.request(subject, b"{}", timeout=10)).data)
            runs.extend(reply["runs"])

    await asyncio.gather(*(one_after_another() for _ in range(4)))
    return runs
