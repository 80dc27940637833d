"""Prometheus metrics from a master and an agent, scraped over HTTP after a real run."""

from __future__ import annotations

import asyncio
import urllib.request

from nats.aio.client import Client

from natsched.embedded import free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def test_master_and_agent_expose_runs_dispatch_and_agent_figures(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    master_port, agent_port = free_port(), free_port()
    async with MasterService(conn, metrics_port=master_port):
        await start_agent("m1", metrics_port=agent_port)
        await apply(nc, toml_jobs(job("ok", mode="slave", targets={"agents": ["m1"]}), group="met"))
        await nc.request("natsched.trigger.met.ok", b"{}", timeout=10)

        async def counted() -> bool:
            agent = await asyncio.to_thread(scrape, agent_port)
            master = await asyncio.to_thread(scrape, master_port)
            return (
                'natsched_runs_total{state="succeeded"} 1.0' in agent
                and 'natsched_runs_total{state="succeeded"} 1.0' in master
                and 'natsched_agent_heartbeat_age_seconds{agent="m1"}' in master
            )

        await eventually(counted, 15, "both count the succeeded run")
        agent = await asyncio.to_thread(scrape, agent_port)
        master = await asyncio.to_thread(scrape, master_port)
        assert 'natsched_runs_total{state="started"} 1.0' in agent
        assert "natsched_outbox_depth 0.0" in agent
        assert "natsched_dispatch_seconds_count 1.0" in master
        assert 'natsched_agent_heartbeat_age_seconds{agent="m1"}' in master
        assert 'natsched_up{role="master"} 1.0' in master
