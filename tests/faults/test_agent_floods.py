"""A flood on an agent's run subject costs the agent bounded memory and log lines, and none of
its work: its run, cancel, sync and pool subscriptions have bounded queues (what overflows is
dropped; a real run request dropped so times out at the master, which withdraws it), and a
bad request is one line per kind and period, not one per message.

Only masters (and, for sync requests, admins) may publish there: this is about a master gone
wrong, not an attacker.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import Process, eventually, said
from tests.faults.flooding import PeakRss, flood
from tests.faults.witness import agent_process, executions, witness_job
from tests.helpers import apply, toml_jobs

pytestmark = pytest.mark.faults
FLOOD_SECONDS = 3.0


async def test_a_flood_of_bad_run_requests_costs_the_agent_neither_memory_nor_logs_nor_its_runs(
    nats_server: EmbeddedServer,
    nc: Client,
    master_process: Process,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    a1 = agent_process(spawn, nats_server.url, "a1", tmp_path / "a1")
    await eventually(lambda: said(a1, "in sync at revision"), 20, "a1 synced")
    assert (
        await apply(
            nc, toml_jobs(witness_job("w", witness, mode="slave", targets={"agents": ["a1"]}), group="af")
        )
    )["ok"]
    lines_before = len(a1.output().splitlines())
    async with PeakRss(a1.popen.pid) as memory:
        sent = await flood(nats_server.url, subjects.agent_run_subject("a1"), FLOOD_SECONDS)
        await asyncio.sleep(1.0)  # what was queued is worked off
    lines = a1.output().splitlines()[lines_before:]
    assert sent > 100_000
    assert memory.growth < 60 * 1024 * 1024, f"grew by {memory.growth >> 20} MB during the flood"
    assert len(lines) < 50, f"{len(lines)} log lines for one flood:\n" + "\n".join(lines[-10:])

    async def ran() -> bool:  # the agent still takes real runs (one queued behind the flood may time out)
        if not executions(witness):
            await nc.request(subjects.trigger_subject("af.w"), b"{}", timeout=15)
        return bool(executions(witness))

    await eventually(ran, 30, "a run on a1 after the flood")
    a1.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(a1.popen.wait, 15)
    assert code == 0 and "Traceback" not in a1.output(), a1.output()[-3000:]
