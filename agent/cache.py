"""The agent's local copy of its job definitions, in SQLite (aiosqlite, WAL).

Values are stored as the raw msgpack bytes from KV and decoded when used, so a cold
sync of 100k definitions does not pay for 100k full validations, and an agent keeps
running its mirror jobs from here while the master or NATS is down.

Two sources: ``jobs`` (the master's, written only by the sync, with the time the master
wrote each) and ``local_jobs`` (the agent's own job files, see ``agent/localjobs.py``,
with each file's modification time). ``get`` and ``all`` give the *effective* job of a
key by the group's replication mode (:func:`effective`); ``keys`` and ``count`` are the
master's only, which is what the sync compares with the bucket.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import aiosqlite

from natsched import codec
from natsched.errors import NotOpenError
from natsched.groupsettings import Replication
from natsched.models import JobSpec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key      TEXT PRIMARY KEY,
    revision INTEGER NOT NULL,
    mode     TEXT NOT NULL,
    value    BLOB NOT NULL
);
-- Every key of the bucket we have seen (untargeted, tombstones, malformed) that `jobs` does
-- not hold, with its last revision: with history 1 the stream keeps exactly one message per
-- key, so the two tables' sizes together must equal the stream's message count, a cheap check
-- for lost deletes. Disjoint from `jobs` (SEEN_APART): a cold sync of 100k jobs targeting this
-- agent wrote 200k rows before, ~0.3 s of its ~0.75 s transaction.
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS local_jobs (
    key      TEXT PRIMARY KEY,
    file     TEXT NOT NULL,
    modified REAL NOT NULL,
    mode     TEXT NOT NULL,
    value    BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class CachedJob:
    key: str
    revision: int  # the bucket's revision; 0 for a local job
    mode: str
    value: bytes
    modified: float = 0.0  # when the master wrote it, or the local file's mtime (epoch seconds)
    origin: str = ""  # "" for the master's; the job file's path for a local job

    def spec(self) -> JobSpec:
        """Decode and validate (raises CodecError on a bad value)."""
        return codec.decode_job(self.value, self.key)

    @property
    def group(self) -> str:
        return self.key.partition(".")[0]


def effective(master: CachedJob | None, local: CachedJob | None, mode: Replication) -> CachedJob | None:
    """Which definition of one key the agent uses: strict -> the master's only; easy -> the
    local one unless the master's was written later than the local file was modified."""
    if local is None or mode is Replication.STRICT:
        return master
    if master is None or local.modified > master.modified:
        return local
    return master


ReplicationOf = Callable[[str], Replication]  # a group's replication mode


_T = TypeVar("_T")
SEEN_APART = 1  # PRAGMA user_version from which `seen` leaves out the keys `jobs` holds
_INLINE_ROWS = 256  # a write this small runs on the event loop's own connection (see _write)
_LOCAL_ONE = "SELECT key, mode, value, modified, file FROM local_jobs WHERE key = ?"
_RECENT = 1024  # master definitions remembered from the latest small writes (see JobCache.get)
_UPSERT = (
    "INSERT INTO jobs (key, revision, mode, value, modified) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET revision=excluded.revision, mode=excluded.mode, "
    "value=excluded.value, modified=excluded.modified"
)

_SEEN_UNLESS_HELD = (
    "INSERT OR REPLACE INTO seen (key, seq) SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE key = ?)"
)


@dataclass(frozen=True, slots=True)
class SyncPosition:
    """Where the cache is in the bucket's stream: resume from here, or resync if it no longer fits."""

    stream_created: str
    last_seq: int


class JobCache:
    """``async with JobCache(path) as cache``; every write is one transaction."""

    def __init__(self, path: Path, replication: ReplicationOf | None = None) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # A second connection, used only on the event loop's thread and never across an await,
        # for small writes and point reads: a trip to aiosqlite's thread costs a thread wake-up,
        # a loop wake-up and two waits for a CPU, which on a busy machine (50 agents, 2 cores)
        # was most of a changed definition's way into the cache. It never waits for a lock:
        # when another connection is writing, the work goes to aiosqlite's thread as before.
        self._inline: sqlite3.Connection | None = None
        self._replication: ReplicationOf = replication or (lambda group: Replication.EASY)
        # This object is the only writer of `jobs` and `local_jobs`, so it may remember what
        # it wrote: the keys that have a local job, and the master's rows of the latest small
        # writes (a change is read back at once by the mirror scheduler and the file watcher).
        # A read answered from memory costs no trip to the SQLite thread: 50 agents on 2 cores
        # paid ~25 such trips per changed definition, most of their CPU per change.
        self._local_keys: set[str] | None = None  # None: not known, ask SQLite
        self._recent: dict[str, CachedJob | None] = {}

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise NotOpenError("cache is not open")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The loop's own connection is opened (and the file made WAL) first: a state dir that
        # cannot hold the file fails here, before aiosqlite's thread exists. Failing in
        # aiosqlite's connect left its thread to answer a loop that had closed by then: a
        # traceback at exit (CI).
        inline = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            inline.execute("PRAGMA journal_mode=WAL")
            await self._open_thread_connection()
        except BaseException:
            inline.close()
            raise
        self._inline = inline
        self._inline.execute("PRAGMA synchronous=NORMAL")
        # Point reads and small writes: a small page cache (SQLite's default is up to 2 MB per
        # connection; the agent's idle RSS has a 50 MB target).
        self._inline.execute("PRAGMA cache_size=-256")

    async def _open_thread_connection(self) -> None:
        """aiosqlite's connection (big writes, in its thread): schema, migrations, local keys."""
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(_SCHEMA)
        async with self._db.execute("PRAGMA table_info(jobs)") as cursor:
            columns = {row[1] for row in await cursor.fetchall()}
        if "modified" not in columns:  # a cache written by an older agent
            await self._db.execute("ALTER TABLE jobs ADD COLUMN modified REAL NOT NULL DEFAULT 0")
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        if row is not None and int(row[0]) < SEEN_APART:
            # An older agent's `seen` held every key; an older agent reading ours counts too
            # few keys and resyncs in full, which writes `seen` its way again.
            await self._db.execute("DELETE FROM seen WHERE key IN (SELECT key FROM jobs)")
            await self._db.execute(f"PRAGMA user_version = {SEEN_APART}")
        await self._db.commit()
        self._local_keys = {row[0] for row in await self._db.execute_fetchall("SELECT key FROM local_jobs")}
        self._recent = {}

    async def _in_thread(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``fn`` on the connection in aiosqlite's thread: one trip for a whole transaction
        (each aiosqlite call is a trip: a thread wake-up and a loop wake-up, ~0.1 ms of CPU)."""
        db = self.db
        run = cast(Callable[..., Any], db._execute)  # noqa: SLF001 - aiosqlite has no public form
        return cast(_T, await run(fn, db._conn))  # noqa: SLF001

    def _write_inline(self, fn: Callable[[sqlite3.Connection], None]) -> bool:
        """Run the transaction ``fn`` here and now if no other connection is writing (False if one is)."""
        conn = self._inline
        if conn is None:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock or fails at once (timeout=0)
        except sqlite3.OperationalError:
            return False
        try:
            fn(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                conn.execute("ROLLBACK")
            raise
        return True

    async def _write(self, fn: Callable[[sqlite3.Connection], None], rows: int) -> None:
        """One transaction: inline if small and the lock is free, else in aiosqlite's thread
        (a big one would hold the event loop; the thread waits its turn for the lock)."""
        if rows <= _INLINE_ROWS and self._write_inline(fn):
            return

        def in_transaction(conn: sqlite3.Connection) -> None:
            with conn:  # commits, or rolls back on an error
                fn(conn)

        await self._in_thread(in_transaction)

    async def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """A small read: on the loop's connection (WAL readers do not wait), else in the thread."""
        if self._inline is not None:
            try:
                rows = self._inline.execute(sql, args).fetchall()
            except sqlite3.OperationalError:  # busy (e.g. recovering the WAL): let the thread wait
                pass
            else:
                # Still a turn of the loop, as the trip to the thread was: a caller reading
                # 100k jobs one by one (the mirror scheduler after a full resync) must not
                # hold the heartbeat and the run requests for the whole walk.
                await asyncio.sleep(0)
                return rows
        return list(await self.db.execute_fetchall(sql, args))

    async def close(self) -> None:
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> JobCache:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def count(self) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM jobs") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def keys(self) -> set[str]:
        async with self.db.execute("SELECT key FROM jobs") as cursor:
            return {row[0] for row in await cursor.fetchall()}

    async def revisions(self) -> dict[str, int]:
        """The master's definitions held: key -> revision."""
        async with self.db.execute("SELECT key, revision FROM jobs") as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    async def present(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` the master's definitions held here include."""
        wanted = list(keys)
        found: set[str] = set()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            async with self.db.execute(f"SELECT key FROM jobs WHERE key IN ({marks})", chunk) as cursor:
                found.update(row[0] for row in await cursor.fetchall())
        return found

    async def master_get(self, key: str) -> CachedJob | None:
        if key in self._recent:
            return self._recent[key]
        rows = await self._read("SELECT key, revision, mode, value, modified FROM jobs WHERE key = ?", (key,))
        return CachedJob(*rows[0]) if rows else None

    async def local_get(self, key: str) -> CachedJob | None:
        if self._local_keys is not None and key not in self._local_keys:
            return None
        rows = await self._read(
            "SELECT key, mode, value, modified, file FROM local_jobs WHERE key = ?", (key,)
        )
        return CachedJob(rows[0][0], 0, *rows[0][1:]) if rows else None

    async def get(self, key: str) -> CachedJob | None:
        """The effective definition of ``key`` (the master's or a local one, see module doc)."""
        master = await self.master_get(key)
        local = await self.local_get(key)
        if local is None:
            return master
        return effective(master, local, self._replication(local.group))

    async def local_all(self) -> list[CachedJob]:
        async with self.db.execute(
            "SELECT key, mode, value, modified, file FROM local_jobs ORDER BY key"
        ) as cursor:
            return [CachedJob(r[0], 0, r[1], r[2], r[3], r[4]) for r in await cursor.fetchall()]

    async def all(self, mode: str | None = None) -> list[CachedJob]:
        """Every effective definition (of ``mode``), by key."""
        query = "SELECT key, revision, mode, value, modified FROM jobs"
        args: tuple[str, ...] = ()
        if mode is not None:
            query += " WHERE mode = ?"
            args = (mode,)
        async with self.db.execute(query + " ORDER BY key", args) as cursor:
            jobs = {r[0]: CachedJob(r[0], r[1], r[2], r[3], r[4]) for r in await cursor.fetchall()}
        local = await self.local_all()
        if not local:
            return list(jobs.values())
        for job in local:
            master = jobs.get(job.key)
            if master is None:  # of another mode, perhaps
                master = await self.master_get(job.key)
            chosen = effective(master, job, self._replication(job.group))
            if chosen is None or (mode is not None and chosen.mode != mode):
                jobs.pop(job.key, None)
            else:
                jobs[job.key] = chosen
        return [jobs[key] for key in sorted(jobs)]

    async def replace_local(self, jobs: Iterable[CachedJob]) -> None:
        """The agent's local jobs, all of them, in one transaction."""
        rows = [(j.key, j.origin, j.modified, j.mode, j.value) for j in jobs]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM local_jobs")
            conn.executemany(
                "INSERT INTO local_jobs (key, file, modified, mode, value) VALUES (?, ?, ?, ?, ?)", rows
            )

        known, self._local_keys = self._local_keys, None
        try:
            await self._write(write, len(rows))
        except Exception:
            self._local_keys = known  # rolled back
            raise
        self._local_keys = {row[0] for row in rows}

    async def position(self) -> SyncPosition | None:
        async with self.db.execute(
            "SELECT name, value FROM meta WHERE name IN ('stream_created', 'last_seq')"
        ) as c:
            meta: dict[str, str] = {str(row[0]): str(row[1]) for row in await c.fetchall()}
        if "stream_created" not in meta:
            return None
        return SyncPosition(meta["stream_created"], int(meta["last_seq"]))

    async def seen_count(self) -> int:
        """Keys of the bucket seen: those the cache holds, and the others (disjoint tables)."""
        async with self.db.execute(
            "SELECT (SELECT COUNT(*) FROM seen) + (SELECT COUNT(*) FROM jobs)"
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def apply(
        self,
        upserts: Iterable[CachedJob],
        deletes: Iterable[str],
        position: SyncPosition,
        *,
        seen: Mapping[str, int],
        replace_seen: bool = False,
    ) -> None:
        """One transaction: upsert, delete, record the keys seen, move the sync position.

        ``seen``: every key of the changes applied, with its revision; ``replace_seen``: they
        are all the bucket's keys (a full resync). ``seen`` keeps the ones ``jobs`` does not
        hold once written (a malformed value leaves the last good one in ``jobs``).
        """
        rows = [(j.key, j.revision, j.mode, j.value, j.modified) for j in upserts]
        gone = [(k,) for k in deletes]
        upserted = {row[0] for row in rows}
        others = [(key, seq, key) for key, seq in seen.items() if key not in upserted]
        meta = [("stream_created", position.stream_created), ("last_seq", str(position.last_seq))]

        def write(conn: sqlite3.Connection) -> None:
            if replace_seen:
                conn.execute("DELETE FROM seen")
            else:
                conn.executemany("DELETE FROM seen WHERE key = ?", ((key,) for key in upserted))
            conn.executemany(_UPSERT, rows)
            conn.executemany("DELETE FROM jobs WHERE key = ?", gone)
            conn.executemany(_SEEN_UNLESS_HELD, others)
            conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta)

        size = len(rows) + len(gone) + len(seen) + (_INLINE_ROWS if replace_seen else 0)
        try:
            await self._write(write, size)
        except BaseException:
            self._recent = {}  # cancelled while in flight: committed or not, we cannot know
            raise
        self._remember(rows, gone)

    def _remember(self, rows: list[tuple[Any, ...]], gone: list[tuple[str]]) -> None:
        """Keep the master's rows just committed, for ``get`` (a big write only empties it)."""
        if len(rows) + len(gone) + len(self._recent) > _RECENT:
            self._recent = {}
        if len(rows) + len(gone) > _RECENT:
            return
        for row in rows:
            self._recent[row[0]] = CachedJob(*row)
        for (key,) in gone:
            self._recent[key] = None
