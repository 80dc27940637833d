"""``natsched sync-report AGENT``: what the agent's cache took in, when, asked from the agent."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.cli.test_commands import natsched
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs


async def test_sync_report_lists_changes_and_deletes(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    agent = await start_agent("r1")
    await apply(nc, toml_jobs(job("one"), job("two"), group="rep"))
    await apply(nc, toml_jobs(job("one"), group="rep"), prune=True)

    async def seen() -> bool:
        return agent.sync is not None and any("rep.two" in e.get("deleted", []) for e in agent.sync.report)

    await eventually(seen, 10, "the agent took in the delete")
    code, out = await asyncio.to_thread(natsched, "sync-report", "r1", "--json", url=nats_server.url)
    assert code == 0, out
    report = json.loads(out)
    changed = [k for e in report["report"] if e["kind"] == "changes" for k in e["changed"]]
    assert {"rep.one", "rep.two"} <= set(changed)
    assert report["revision"] >= 3 and report["agent"] == "r1"
    code, out = await asyncio.to_thread(natsched, "sync-report", "r1", url=nats_server.url)
    assert code == 0 and "deleted rep.two" in out and "rev" in out, out
    code, out = await asyncio.to_thread(natsched, "sync-report", "ghost", url=nats_server.url)
    assert code == 1 and "agent 'ghost' does not answer" in out
