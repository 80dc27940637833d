"""A lost agent whose clock runs ahead of the NATS server's still has its runs closed.

The leader looks for a lost agent's runs in the streams from its life's start, which the agent
states in its own clock (``started_at``), with 5 s of slack; the streams' times are the
server's. An agent whose clock ran 30 s ahead, killed in its first 25 s, had its events, its
claims and the runs it accepted all before that start: its run stayed ``started`` for ever and
a ``redispatch_lost`` job never ran again. Here the agent's ``time.time`` runs 30 s ahead
(``sitecustomize``), as on a host whose clock nobody keeps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import Process, eventually
from tests.faults.witness import (
    executions,
    lost_job,
    pool_agent,
    recorded,
    run_on_a1,
    seen_by,
    started_agents,
    started_on,
)
from tests.helpers import started_master

pytestmark = pytest.mark.faults
AHEAD = 30.0


async def test_the_runs_of_an_agent_whose_clock_is_ahead_are_closed_when_it_is_lost(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    skewed = tmp_path / "skewed"
    skewed.mkdir()
    (skewed / "sitecustomize.py").write_text(
        f"import time\n_real = time.time\ntime.time = lambda: _real() + {AHEAD}\n"
    )
    url = nats_server.url
    a1 = spawn(
        "natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), "--pool", "p",
        url=url, log_name="agent-a1.log",
        env={
            "PYTHONPATH": str(skewed), "NATSCHED_AGENT_PRIORITY": "1",
            # Its last heartbeat before it dies lists no run: the streams are what is left.
            "NATSCHED_AGENT_HEARTBEAT_INTERVAL": "5", "NATSCHED_AGENT_SHUTDOWN_GRACE": "1",
        },
    )  # fmt: skip
    pool_agent(spawn, url, tmp_path, "b1")
    master = await started_master(lambda: MasterService(conn, lease_ttl=2.0, unresponsive_after=3.0))
    try:
        await seen_by(master, "a1", "b1")
        assert master.dispatcher is not None
        assert master.dispatcher.directory.last_seen["a1"][0].started_at > time.time() + AHEAD - 20
        spec = lost_job("long", witness)
        run = await run_on_a1(nc, spec, "ca")
        await eventually(lambda: started_on(witness, "a1"), 10, "the run executing on a1")
        a1.kill()  # within its first 25 s
        await eventually(lambda: recorded(nc, "ca.long", run["run_id"], "lost"), 15, "the run recorded lost")
        await eventually(lambda: started_on(witness, "b1"), 15, "the lost run ran again on b1")
        await asyncio.sleep(1.0)
    finally:
        await master.__aexit__(None, None, None)
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
