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


def _tables(path: Path) -> tuple[set[str], set[str]]:
    """(keys in `jobs`, keys in `seen`), read from the file."""
    db = sqlite3.connect(path)
    try:
        jobs = {row[0] for row in db.execute("SELECT key FROM jobs")}
        seen = {row[0] for row in db.execute("SELECT key FROM seen")}
    finally:
        db.close()
    return jobs, seen


async def test_every_key_seen_counts_once_whatever_it_became(tmp_path: Path) -> None:
    """The lost-deletes check compares this count with the bucket's keys: a key counted twice
    or not at all would force full resyncs forever, or hide a purged delete."""
    path = tmp_path / "cache.sqlite"
    a, b, x = (CachedJob(key, rev, "mirror", b"v", 1.0) for key, rev in (("g.a", 1), ("g.b", 2), ("g.x", 4)))
    async with JobCache(path) as cache:
        # A full resync: two jobs for this agent, one that targets others.
        await cache.apply(
            [a, b], [], SyncPosition("c", 3), seen={"g.a": 1, "g.b": 2, "g.x": 3}, replace_seen=True
        )
        assert await cache.seen_count() == 3
        await cache.apply([x], [], SyncPosition("c", 4), seen={"g.x": 4})  # now it targets us
        assert await cache.seen_count() == 3
        await cache.apply([], ["g.a"], SyncPosition("c", 5), seen={"g.a": 5})  # deleted
        assert await cache.seen_count() == 3
        # Malformed: the last good value stays in `jobs`, and the key counts once.
        await cache.apply([], [], SyncPosition("c", 6), seen={"g.b": 6})
        assert await cache.seen_count() == 3 and await cache.get("g.b") == b
        await cache.apply([], [], SyncPosition("c", 7), seen={"g.n": 7})  # a new key, not ours
        assert await cache.seen_count() == 4
        seen = {"g.a": 5, "g.b": 6, "g.x": 4, "g.n": 7}
        await cache.apply([x], [], SyncPosition("c", 7), seen=seen, replace_seen=True)  # b malformed
        assert await cache.seen_count() == 4
    jobs, others = _tables(path)
    assert jobs == {"g.b", "g.x"} and others == {"g.a", "g.n"}  # one row per key, not two


async def test_the_cache_of_an_older_agent_counts_each_key_once(tmp_path: Path) -> None:
    """Older agents kept every key in `seen`, those in `jobs` too; opened, the cache drops the
    copies once, so the lost-deletes check does not count them twice (and resync in full)."""
    path = tmp_path / "cache.sqlite"
    async with JobCache(path) as cache:
        job = CachedJob("g.a", 1, "mirror", b"v", 1.0)
        await cache.apply([job], [], SyncPosition("c", 2), seen={"g.a": 1, "g.x": 2}, replace_seen=True)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO seen (key, seq) VALUES ('g.a', 1)")  # as an older agent wrote it
    db.execute("PRAGMA user_version = 0")
    db.close()
    async with JobCache(path) as cache:
        assert await cache.seen_count() == 2
    assert _tables(path) == ({"g.a"}, {"g.x"})
