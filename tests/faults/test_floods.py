"""A flood on the trigger subject (anyone may publish there) costs the master bounded memory and
log lines, and neither its lease nor its scheduling: what others may flood arrives on a
connection of its own, with a bounded pending queue.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import nats
import pytest

from natsched import subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import Process, eventually, said
from tests.faults.flooding import PeakRss, flood

pytestmark = pytest.mark.faults
FLOOD_SECONDS = 3.0


async def test_a_trigger_flood_costs_the_master_neither_its_lease_nor_unbounded_memory_or_logs(
    nats_server: EmbeddedServer, master_process: Process, spawn: Callable[..., Process]
) -> None:
    await eventually(lambda: said(master_process, "is the leader"), 15, "the master leads")
    await eventually(lambda: said(master_process, "start-up settled"), 15, "the master settled")
    lines_before = len(master_process.output().splitlines())
    async with PeakRss(master_process.popen.pid) as memory:
        sent = await flood(nats_server.url, subjects.trigger_subject("g.nojob"), FLOOD_SECONDS)
        nc = await nats.connect(nats_server.url)
        try:  # the master answers again once the flood is over
            async with asyncio.timeout(30):
                while True:
                    try:
                        await nc.request(subjects.API_PING, b"{}", timeout=1)
                        break
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        await asyncio.sleep(0.2)
        finally:
            await nc.close()
    out = master_process.output()
    lines = out.splitlines()[lines_before:]
    assert sent > 100_000
    assert "no longer the leader" not in out, "\n".join(lines[-30:])
    assert memory.growth < 60 * 1024 * 1024, f"grew by {memory.growth >> 20} MB during the flood"
    assert len(lines) < 50, f"{len(lines)} log lines for one flood:\n" + "\n".join(lines[-10:])
    master_process.popen.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(master_process.popen.wait, 15)
    assert code == 0 and "Traceback" not in master_process.output(), master_process.output()[-3000:]
