"""A retry whose master died between claiming it and sending it is sent by the next master.

A failure is retried once across masters by creating ``retry.<run_id>`` first; a master killed
right after that write (before its run request left) left a key that told every redelivery
"retried already": the retry never ran, and nothing said so. The window is a few
milliseconds, so here the first master's dispatch of the retry is where it "dies" (its
connection closed, as by kill -9, nothing more sent).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.faults.witness import WITNESS_LINE, events_of, executions
from tests.helpers import apply, job, started_master, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults


async def test_a_retry_claimed_by_a_master_that_died_before_sending_it_runs(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    witness, marker = tmp_path / "witness", tmp_path / "fail-once"
    marker.write_text("")
    script = f"{WITNESS_LINE.format(path=witness)}; if [ -e {marker} ]; then rm {marker}; exit 3; fi"
    flaky = job(
        "flaky",
        mode="slave",
        targets={"agents": ["s1"]},
        command=["sh", "-c", script],
        retries={"attempts": 2, "backoff": 0.3, "jitter": 0},
    )
    first = await started_master(lambda: MasterService(conn))
    try:
        await start_agent("s1")
        assert (await apply(nc, toml_jobs(flaky, group="rf")))["ok"]
        assert first.dispatcher is not None and first.nc is not None
        dead = asyncio.Event()

        async def dies_before_sending(*args: Any, **kwargs: Any) -> list[Any]:
            assert first.nc is not None
            await first.nc.close()  # as kill -9: the retry key is written, no request sent
            dead.set()
            await asyncio.Event().wait()
            return []

        await trigger(nc, "rf.flaky")
        first.dispatcher.dispatch = dies_before_sending  # type: ignore[method-assign]
        async with asyncio.timeout(10):
            await dead.wait()
    finally:
        await first.__aexit__(None, None, None)
    async with MasterService(conn):

        async def retried() -> bool:
            return len(executions(witness)) >= 2

        await eventually(retried, 15, "the retry ran")
        await asyncio.sleep(1.0)  # a second retry, had there been one, has run too
    ran = executions(witness)
    assert len(ran) == 2, f"one failed run, one retry: {ran}"
    finals = [e for e in await events_of(nc, "rf.flaky") if e["state"] in ("failed", "succeeded")]
    assert sorted((e["attempt"], e["state"]) for e in finals) == [(1, "failed"), (2, "succeeded")], finals
