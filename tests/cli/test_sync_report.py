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


async def test_sync_now_full_and_a_job_that_stops_targeting_the_agent(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    url = nats_server.url
    agent = await start_agent("r2")
    await apply(nc, toml_jobs(job("a"), job("b", targets={"agents": ["r2"]}), group="rep"))

    async def cached() -> bool:
        return agent.sync is not None and len(await agent.cache.revisions()) == 2

    await eventually(cached, 10, "both jobs cached")
    code, out = await asyncio.to_thread(natsched, "sync", "r2", url=url)
    assert code == 0 and "r2: sync at revision" in out and "no change" in out, out

    # b now targets another agent: it leaves r2's cache, but it was not deleted.
    await apply(nc, toml_jobs(job("a"), job("b", targets={"agents": ["elsewhere"]}), group="rep"))

    async def untargeted() -> bool:
        return agent.sync is not None and any("rep.b" in e.get("untargeted", []) for e in agent.sync.report)

    await eventually(untargeted, 10, "the agent dropping rep.b")
    code, out = await asyncio.to_thread(natsched, "sync-report", "r2", url=url)
    assert "no longer targets this agent: rep.b" in out and "deleted rep.b" not in out, out

    revision = agent.sync.position.last_seq if agent.sync and agent.sync.position else 0
    code, out = await asyncio.to_thread(natsched, "sync", "--all", "--full", "--json", url=url)
    assert code == 0, out
    [answer] = json.loads(out)
    assert answer["ok"] and answer["agent"] == "r2" and answer["full"] and answer["revision"] >= revision
    [entry] = answer["changes"]
    assert entry["kind"] == "full resync" and entry["count"] == 1
    assert set(entry) >= {"at", "kind", "changed", "deleted", "untargeted", "count", "revision"}
    code, out = await asyncio.to_thread(natsched, "sync", "r2", "--full", url=url)
    assert code == 0 and "r2: full resync at revision" in out and "full resync: 1 jobs" in out, out

    code, out = await asyncio.to_thread(natsched, "sync", "r2", "ghost", "--timeout", "1", url=url)
    assert code == 1 and "ghost: failed: does not answer" in out and "r2: sync at revision" in out, out
