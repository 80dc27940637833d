"""The runs this agent holds, in SQLite, so that a restart accounts for every one of them.

A run is written here when it starts (``started``, with its pid) or waits its turn
(``queued``: overlap ``queue``, an agent paused with ``--queue``, a load-balance run
waiting for the cluster lock, with what it needs to start later), and removed when it
ends. The removal is committed *before* the run's final event is handed to the outbox,
so a row left here after a crash is a run whose end was never reported. The agent that
starts next (see ``agent/recovery.py``) reports those: a started run as ``lost`` (its
processes died with the agent, see ``agent/guardian.py``), a queued run by queueing it
again.

Starts and queueings are written by a background task in batches (a run never waits for
SQLite to start); an end waits for its batch's commit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiosqlite

from natsched import codec
from natsched.errors import CodecError
from natsched.events import RunEvent, RunState, parse_event
from natsched.models import JobSpec

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held_runs (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id  TEXT NOT NULL UNIQUE,
    state   TEXT NOT NULL,
    event   BLOB NOT NULL,
    launch  BLOB
);
"""
_UPSERT = (
    "INSERT INTO held_runs (run_id, state, event, launch) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(run_id) DO UPDATE SET state=excluded.state, event=excluded.event, "
    "launch=COALESCE(excluded.launch, held_runs.launch)"
)
_DELETE = "DELETE FROM held_runs WHERE run_id = ?"


@dataclass(frozen=True, slots=True)
class HeldRun:
    """A row left from before: its last event and, for a queued run, how to start it."""

    event: RunEvent
    locked: bool = False  # a started run holding its job's cluster-wide lock
    spec: JobSpec | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None


class RunJournal:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._pending: list[tuple[str, tuple[object, ...]]] = []
        self._lock = asyncio.Lock()  # one commit at a time; whoever holds it writes all pending
        self._wake = asyncio.Event()
        self._held: set[str] = set()  # run ids with a row: only their end costs a commit

    async def open(self) -> list[HeldRun]:
        """Create the table; return the runs left from the previous start, oldest first."""
        await self._db.executescript(_SCHEMA)
        await self._db.commit()
        async with self._db.execute("SELECT run_id, event, launch FROM held_runs ORDER BY seq") as cursor:
            rows = list(await cursor.fetchall())
        left: list[HeldRun] = []
        for run_id, event, launch in rows:
            try:
                left.append(_held_run(event, launch))
                self._held.add(run_id)
            except CodecError as exc:
                log.warning("run %s in the journal is unreadable (%s); dropped", run_id, exc)
                self._write(_DELETE, (run_id,))
        return left

    def started(self, event: RunEvent, *, locked: bool = False) -> None:
        self._held.add(event.run_id)
        launch = codec.pack({"locked": True}) if locked else None
        self._write(_UPSERT, (event.run_id, event.state.value, event.to_json(), launch))

    def queued(self, event: RunEvent, spec: JobSpec, args: tuple[str, ...], env: Mapping[str, str]) -> None:
        self._held.add(event.run_id)
        launch = codec.pack({"spec": codec.encode_job(spec), "args": list(args), "env": dict(env)})
        self._write(_UPSERT, (event.run_id, event.state.value, event.to_json(), launch))

    async def ended(self, run_id: str) -> None:
        """Forget the run; returns once that is committed (a failure is logged, not raised)."""
        if run_id not in self._held:
            return
        self._held.discard(run_id)
        self._write(_DELETE, (run_id,))
        await self.flush()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        self._pending.append((sql, args))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Commit everything pending, in order, in one transaction (group commit)."""
        async with self._lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                # Consecutive writes of one kind go in one executemany; order is kept.
                for sql, group in itertools.groupby(batch, key=lambda write: write[0]):
                    await self._db.executemany(sql, [args for _, args in group])
                await self._db.commit()
            except Exception as exc:  # noqa: BLE001 - the runs go on; only their restart record is gone
                log.warning("run journal: %d write(s) failed: %r", len(batch), exc)


def _held_run(event_json: bytes, launch: bytes | None) -> HeldRun:
    event = parse_event(event_json, None)  # our own record, not received from anyone
    if launch is None:
        return HeldRun(event)
    data = codec.unpack(launch, "held run")
    if event.state is not RunState.QUEUED:
        return HeldRun(event, locked=bool(data.get("locked")))
    try:
        spec = codec.decode_job(bytes(data["spec"]), event.job)
        args = tuple(str(a) for a in data.get("args") or ())
        env = {str(k): str(v) for k, v in (data.get("env") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"queued run: {exc}") from None
    return HeldRun(event, spec=spec, args=args, env=env)
