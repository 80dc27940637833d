"""Runs held by a job paused with ``--queue`` survive the master that held them."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from natsched import subjects
from natsched.kvscan import scan
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs


async def held(nc: Client) -> int:
    return len(await scan(nc.jetstream(), subjects.STATE_BUCKET, subjects.HELD_RUNS))


async def test_queued_runs_of_a_paused_job_start_after_the_master_restarted(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    async with MasterService(conn) as first:
        await start_agent("h1")
        await apply(
            nc,
            toml_jobs(
                job("tick", mode="slave", targets={"agents": ["h1"]}, triggers=[{"every": "1s"}]), group="hr"
            ),
        )
        assert (await api(nc, subjects.API_PAUSE, {"job": "hr.tick", "mode": "queue"}))["ok"]

        async def some_held() -> bool:
            return await held(nc) >= 2

        await eventually(some_held, 10, "slots held while the job is paused")
        assert first.lease is not None and first.lease.held()
    stopped = time.time()
    held_then = await held(nc)
    async with MasterService(conn) as second:
        await eventually(lambda: _leads(second), 10, "the new master leads")
        assert (await api(nc, subjects.API_RESUME, {"job": "hr.tick"}))["ok"]

        async def held_ones_ran() -> bool:
            started = [
                e
                for e in await stream_events(nc)
                if e["job"] == "hr.tick" and e["state"] == "started" and e["scheduled_at"] < stopped
            ]
            return len(started) >= held_then

        await eventually(held_ones_ran, 10, "the runs held by the first master started on resume")

        async def none_held() -> bool:
            return await held(nc) == 0

        await eventually(none_held, 5, "no held run left behind")
        slots = [
            e["scheduled_at"]
            for e in await stream_events(nc)
            if e["job"] == "hr.tick" and e["state"] == "started"
        ]
        assert len(slots) == len(set(slots)), "no slot started twice"


async def _leads(master: MasterService) -> bool:
    await asyncio.sleep(0)
    return master.lease is not None and master.lease.held()
