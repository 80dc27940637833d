"""The agent's SQLite job cache shares its file with the agent's other tables: a write of the
cache never fails or holds the event loop because another connection is writing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from agent.cache import CachedJob, JobCache, SyncPosition


async def test_a_small_write_waits_for_another_writer_without_holding_the_loop(tmp_path: Path) -> None:
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        other = sqlite3.connect(tmp_path / "cache.sqlite", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another part of the agent is in a write transaction
        other.execute("CREATE TABLE elsewhere (x INTEGER)")
        job = CachedJob("g.a", 7, "mirror", b"value", 1.0)
        write = asyncio.create_task(cache.apply([job], [], SyncPosition("c", 7), seen={"g.a": 7}))
        ticks = 0
        async with asyncio.timeout(5):
            while ticks < 20:  # the loop keeps turning while the write waits for the lock
                await asyncio.sleep(0.01)
                ticks += 1
        assert not write.done()
        other.execute("COMMIT")
        other.close()
        async with asyncio.timeout(5):
            await write
        assert await cache.get("g.a") == job
        assert await cache.position() == SyncPosition("c", 7)
        # Read back from the file itself, not from what the cache remembers of its writes.
        async with JobCache(tmp_path / "cache.sqlite") as again:
            assert await again.get("g.a") == job
            assert await again.revisions() == {"g.a": 7}


async def test_get_follows_writes_deletes_and_local_jobs(tmp_path: Path) -> None:
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        master = CachedJob("g.a", 3, "mirror", b"m", 1.0)
        await cache.apply([master], [], SyncPosition("c", 3), seen={"g.a": 3})
        assert await cache.get("g.a") == master
        local = CachedJob("g.a", 0, "mirror", b"l", 2.0, "/etc/jobs/a.toml")
        await cache.replace_local([local])
        assert await cache.get("g.a") == local  # easy: the newer local file wins
        await cache.replace_local([])
        await cache.apply([], ["g.a"], SyncPosition("c", 4), seen={"g.a": 4})
        assert await cache.get("g.a") is None
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        assert await cache.get("g.a") is None and await cache.count() == 0


async def test_a_read_from_sqlite_gives_the_loop_a_turn(tmp_path: Path) -> None:
    """A caller walking 100k jobs one get() at a time (the mirror scheduler after a full
    resync) must not hold the agent's heartbeat and run requests for the whole walk."""
    job = CachedJob("g.a", 3, "mirror", b"m", 1.0)
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        await cache.apply([job], [], SyncPosition("c", 3), seen={"g.a": 3})
    async with JobCache(tmp_path / "cache.sqlite") as cache:  # nothing remembered: SQLite answers
        others: list[int] = []
        asyncio.get_running_loop().call_soon(others.append, 1)
        assert await cache.get("g.a") == job
        assert others == [1]
