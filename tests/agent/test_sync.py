"""Agents cache the definitions that target them, and converge after every kind of gap."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from agent.cache import JobCache
from agent.config import AgentConfig
from agent.service import AgentService
from natsched import codec, subjects
from natsched.buckets import ensure_all
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, toml_jobs


async def _has(agent: AgentService, keys: set[str]) -> bool:
    """The cache holds exactly ``keys`` and has committed what it read (position moved)."""
    if agent.sync is None or agent.sync.position is None:
        return False
    kv_last = agent.sync.position.last_seq
    return (
        await agent.cache.keys() == keys
        and (await agent.cache.position()) == agent.sync.position
        and (kv_last > 0 or not keys)
    )


async def test_apply_update_delete_reach_the_agent_cache(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    agent = await start_agent("a1")
    await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
    await eventually(lambda: _has(agent, {"g.a", "g.b"}), 10, "created jobs cached")

    await apply(nc, toml_jobs(job("a", command=["echo", "v2"]), group="g"))

    async def updated() -> bool:
        cached = await agent.cache.get("g.a")
        return cached is not None and cached.spec().command == ("echo", "v2")

    await eventually(updated, 10, "update cached")
    await apply(nc, toml_jobs(job("a", command=["echo", "v2"]), group="g"), prune=True)
    await eventually(lambda: _has(agent, {"g.a"}), 10, "pruned job removed from cache")


async def test_agent_caches_only_jobs_that_target_it(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    db = await start_agent("db1", tags=frozenset({"db"}))
    web = await start_agent("web1", pools=frozenset({"front"}))
    await apply(
        nc,
        toml_jobs(
            job("all"),
            job("dbonly", targets={"tags": ["db"]}),
            job("named", targets={"agents": ["web1"]}),
            job("pooled", mode="load-balance", targets={"pools": ["front"]}),
            group="g",
        ),
    )
    await eventually(lambda: _has(db, {"g.all", "g.dbonly"}), 10, "db1 has its jobs")
    await eventually(lambda: _has(web, {"g.all", "g.named", "g.pooled"}), 10, "web1 has its jobs")
    # Retargeting a job away from an agent removes it from that agent's cache.
    await apply(nc, toml_jobs(job("dbonly", targets={"agents": ["web1"]}), group="g"))
    await eventually(lambda: _has(db, {"g.all"}), 10, "retargeted job left db1")
    await eventually(lambda: _has(web, {"g.all", "g.named", "g.pooled", "g.dbonly"}), 10, "and reached web1")


async def test_group_filter(master: MasterService, nc: Client, start_agent: AgentFactory) -> None:
    agent = await start_agent("a1", groups=frozenset({"ops"}))
    await apply(nc, toml_jobs(job("x"), group="ops"))
    await apply(nc, toml_jobs(job("y"), group="dev"))
    await eventually(lambda: _has(agent, {"ops.x"}), 10)
    await asyncio.sleep(0.2)
    assert await agent.cache.keys() == {"ops.x"}


async def test_restart_resumes_from_its_position_without_full_resync(
    master: MasterService, nc: Client, start_agent: AgentFactory, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(
        name="a1", state_dir=tmp_path / "a1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    async with AgentService(config, conn) as agent:
        await agent.synced(5)
        await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
        await eventually(lambda: _has(agent, {"g.a", "g.b"}), 10)
    # Changes while the agent is away: one update, one delete, one create.
    await apply(nc, toml_jobs(job("a", command=["echo", "2"]), job("c"), group="g"), prune=True)
    async with AgentService(config, conn) as agent:
        await agent.synced(5)
        await eventually(lambda: _has(agent, {"g.a", "g.c"}), 10)
        assert agent.sync is not None and agent.sync.full_resyncs == 0
        cached = await agent.cache.get("g.a")
        assert cached is not None and cached.spec().command == ("echo", "2")


async def test_agent_started_while_nats_is_down_has_its_jobs(
    master: MasterService, nc: Client, nats_server: EmbeddedServer, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(
        name="a1", state_dir=tmp_path / "a1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    async with AgentService(config, conn) as agent:
        await agent.synced(5)
        await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
        await eventually(lambda: _has(agent, {"g.a", "g.b"}), 10)
    nats_server.stop()
    try:
        async with asyncio.timeout(5), AgentService(config, conn) as agent:
            # Start-up does not wait for NATS: the cache is there at once.
            assert await agent.cache.keys() == {"g.a", "g.b"}
            assert not agent.connected.is_set()
    finally:
        nats_server.start()


async def test_bucket_deleted_and_recreated_converges(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    agent = await start_agent("a1")
    await apply(nc, toml_jobs(job("a"), job("b"), job("c"), group="g"))
    await eventually(lambda: _has(agent, {"g.a", "g.b", "g.c"}), 10)
    js = nc.jetstream()
    await js.delete_key_value(subjects.JOBS_BUCKET)
    await ensure_all(js)
    # Fewer keys than before, so revisions restart below the agent's position.
    await apply(nc, toml_jobs(job("z"), group="g"))
    await eventually(lambda: _has(agent, {"g.z"}), 10, "cache equals the recreated bucket")


async def test_purged_history_forces_full_resync(
    master: MasterService, nc: Client, start_agent: AgentFactory, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(
        name="a1", state_dir=tmp_path / "a1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    async with AgentService(config, conn) as agent:
        await agent.synced(5)
        await apply(nc, toml_jobs(job("a"), job("b"), group="g"))
        await eventually(lambda: _has(agent, {"g.a", "g.b"}), 10)
    # While the agent is away, the stream is purged and rewritten: its position no longer fits.
    js = nc.jetstream()
    await js.purge_stream(subjects.kv_stream(subjects.JOBS_BUCKET))
    await apply(nc, toml_jobs(job("n"), group="g"))
    async with AgentService(config, conn) as agent:
        await agent.synced(5)
        await eventually(lambda: _has(agent, {"g.n"}), 10)
        assert agent.sync is not None and agent.sync.full_resyncs >= 1


async def test_thousand_jobs_sync(master: MasterService, nc: Client, start_agent: AgentFactory) -> None:
    await apply(nc, toml_jobs(*[job(f"j{i:04d}") for i in range(1000)], group="bulk"))
    agent = await start_agent("a1")
    assert await agent.cache.count() == 1000
    late = await start_agent("a2", wait_synced=False)
    await agent.synced(10)
    await late.synced(10)
    await eventually(lambda: _count_is(late.cache, 1000), 10)


async def _count_is(cache: JobCache, n: int) -> bool:
    return await cache.count() == n


async def test_garbage_values_are_skipped_and_the_agent_stays_up(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    agent = await start_agent("a1")
    await apply(nc, toml_jobs(job("good"), group="g"))
    kv = await nc.jetstream().key_value(subjects.JOBS_BUCKET)
    await kv.put("g.garbage", b"\xc1\xc1 not msgpack")
    await kv.put("g.future", codec.pack({"v": 99}).replace(b"\x01", b"\x63"))
    await kv.put("g.notargets", codec.pack({"name": "x"}))
    await apply(nc, toml_jobs(job("good"), job("after"), group="g"))
    await eventually(lambda: _has(agent, {"g.good", "g.after"}), 10, "valid jobs still sync after garbage")
    assert agent.failed is not None and not agent.failed.done()


async def test_heartbeat_reports_identity_and_cache(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await apply(nc, toml_jobs(job("a"), group="g"))
    await start_agent("a1", tags=frozenset({"db"}), pools=frozenset({"p"}))
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)

    async def reported() -> bool:
        try:
            hb = codec.decode_heartbeat((await kv.get("a1")).value or b"", "a1")
        except Exception:  # noqa: BLE001 - not there yet
            return False
        return hb.tags == ("db",) and hb.pools == ("p",) and hb.jobs_cached == 1 and hb.synced_revision >= 1

    await eventually(reported, 10, "heartbeat with identity and cache size")
