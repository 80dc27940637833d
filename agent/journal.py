"""The runs this agent holds, in SQLite, so that a restart accounts for every one of them.

A run is written here when it starts (``started``, with its pid) or waits its turn
(``queued``: overlap ``queue``, an agent paused with ``--queue``, a load-balance run
waiting for the cluster lock, with what it needs to start later), and removed when it
ends. The removal is committed *before* the run's final event is handed to the outbox,
so a row left here after a crash is a run whose end was never reported. The agent that
starts next (see ``agent/recovery.py``) reports those: a started run as ``lost`` (its
processes died with the agent, see ``agent/guardian.py``), a queued run by queueing it
again.

The journal is its own SQLite file (``runs.sqlite`` beside the cache), written with plain
``sqlite3`` in the event loop's thread: a commit there is ~30 us (WAL, no fsync per commit),
where a commit through aiosqlite's thread cost a thread hop and a turn of the loop (1-2 ms
under load, in front of every spawn). Checkpoints, which do fsync, run in a worker thread
on a connection of their own, so the loop never waits for the disk. Writes queue in memory
and are committed by the next ``flush``: one a caller needs now (before a spawn, at a run's
end), else one in the next turn of the loop.

A started run's second row (its pid, once spawned) is the exception: its first row, committed
before the spawn, already makes the run recoverable, and the pid only lets the next agent
kill leftovers of its process group (the guardian kills the group itself). That row waits
for the next commit anyway, at most ``PID_DELAY``, and is dropped when the run ends before:
a short run (most of them) costs the journal two commits, not three, and a burst of runs
shares its pid rows' commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from natsched import codec
from natsched.errors import CodecError
from natsched.events import RunEvent, RunState, parse_record
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
# Mirror slots whose cursor is committed but whose run has no record yet (see ClaimedSlot).
_SLOTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS claimed_slots (
    job     TEXT NOT NULL,
    slot    REAL NOT NULL,
    trigger TEXT NOT NULL,
    PRIMARY KEY (job, slot)
);
"""
_CLAIM = "INSERT OR REPLACE INTO claimed_slots (job, slot, trigger) VALUES (?, ?, ?)"
_SETTLE = "DELETE FROM claimed_slots WHERE job = ? AND slot = ?"
CHECKPOINT_EVERY = 2.0  # seconds: the WAL is folded back into the file at most this often
PID_DELAY = 0.1  # seconds a started run's pid row may wait for a commit (see the docstring)


@dataclass(frozen=True, slots=True)
class HeldRun:
    """A row left from before: its last event and, for a queued run, how to start it."""

    event: RunEvent
    locked: bool = False  # a started run holding its job's cluster-wide lock
    spec: JobSpec | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ClaimedSlot:
    """A mirror slot this agent took (its cursor moved past it) whose run has no record:
    the agent died in the milliseconds between the two. The next start launches it, else
    the slot would be neither run nor recorded."""

    job: str
    slot: float
    trigger: str


class RunJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[str, tuple[object, ...]]] = []
        self._pids: dict[str, tuple[object, ...]] = {}  # run id -> its pid row, not committed yet
        self._soon: asyncio.Handle | None = None  # the commit of the next turn, once scheduled
        self._pid_timer: asyncio.TimerHandle | None = None
        self._held: set[str] = set()  # run ids with a row: only their end costs a commit
        self._turn: asyncio.Event | None = None  # set once the writes queued now are committed
        self._since_checkpoint = 0
        self.unlaunched: list[ClaimedSlot] = []  # left by the previous start (see ClaimedSlot)

    async def open(self) -> list[HeldRun]:
        """Create the table; return the runs left from the previous start, oldest first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._db is not None:
            self._db.close()
        db = self._db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints are run()'s, off the loop
        db.executescript(_SCHEMA + _SLOTS_SCHEMA)
        self.unlaunched = [
            ClaimedSlot(job, float(slot), trigger)
            for job, slot, trigger in db.execute("SELECT job, slot, trigger FROM claimed_slots ORDER BY slot")
        ]
        rows = db.execute("SELECT run_id, event, launch FROM held_runs ORDER BY seq").fetchall()
        left: list[HeldRun] = []
        for run_id, event, launch in rows:
            try:
                left.append(_held_run(event, launch))
                self._held.add(run_id)
            except CodecError as exc:
                log.warning("run %s in the journal is unreadable (%s); dropped", run_id, exc)
                self._write(_DELETE, (run_id,))
        return left

    def close(self) -> None:
        self.flush_now()
        if self._db is not None:
            self._db.close()
            self._db = None

    def slots_claimed(self, slots: list[ClaimedSlot]) -> None:
        """Committed now, before the caller commits the cursors that move past them."""
        for each in slots:
            self._write(_CLAIM, (each.job, each.slot, each.trigger))
        self.flush_now()

    def settle_slot(self, job: str, slot: float | None) -> None:
        """The slot's run has its record (held here, or an event on its way), or it is not to
        be launched: it is no longer unlaunched. Committed with the run's own row, if any."""
        if slot is not None:
            self._write(_SETTLE, (job, slot))

    def started(self, event: RunEvent, *, locked: bool = False, data: bytes | None = None) -> None:
        """``data``: the event's record (:meth:`RunEvent.to_record`, or its JSON) when the
        caller has it already; else its record is made here (before a spawn: the cheap one)."""
        self._held.add(event.run_id)
        launch = codec.pack({"locked": True}) if locked else None
        self._write(_UPSERT, (event.run_id, event.state.value, data or event.to_record(), launch))
        self.settle_slot(event.job, event.scheduled_at)

    def spawned(self, event: RunEvent, *, locked: bool = False, data: bytes | None = None) -> None:
        """The started run's row again, with its pid: committed with the next commit, within
        ``PID_DELAY``, or never if the run ends first (see the module docstring)."""
        if event.run_id not in self._held:
            return  # ended already, or never recorded started: nothing to add a pid to
        launch = codec.pack({"locked": True}) if locked else None
        self._pids[event.run_id] = (event.run_id, event.state.value, data or event.to_record(), launch)
        if self._pid_timer is None:
            with contextlib.suppress(RuntimeError):  # no loop: the next flush takes it
                self._pid_timer = asyncio.get_running_loop().call_later(PID_DELAY, self.flush_now)

    def queued(self, event: RunEvent, spec: JobSpec, args: tuple[str, ...], env: Mapping[str, str]) -> None:
        self._held.add(event.run_id)
        launch = codec.pack({"spec": codec.encode_job(spec), "args": list(args), "env": dict(env)})
        self._write(_UPSERT, (event.run_id, event.state.value, event.to_record(), launch))
        self.settle_slot(event.job, event.scheduled_at)

    async def ended(self, run_id: str) -> None:
        """Forget the run; returns once that is committed (a failure is logged, not raised)."""
        if run_id not in self._held:
            return
        self._held.discard(run_id)
        self._pids.pop(run_id, None)  # its row goes: its pid need not be written first
        self._write(_DELETE, (run_id,))
        await self.committed()

    async def committed(self) -> None:
        """Returns once everything queued so far is committed (a failure is logged, not raised).

        Group commit: the first caller schedules the commit for the next turn of the loop, and
        every write queued until then goes in it: runs that start or end together (their
        processes exited in one turn, their claims came back in one read) share one commit
        instead of paying one each (~70 us of the loop apiece at 32 runs in flight).
        """
        turn = self._turn
        if turn is None:
            turn = self._turn = asyncio.Event()  # set by the next commit, whoever makes it
            self._flush_soon()
        await turn.wait()

    def _write(self, sql: str, args: tuple[object, ...]) -> None:
        """Queued for the next commit: a caller's flush, else the next turn of the loop's.

        A callback, not a task woken per write: most writes (a row before its spawn) are
        committed by their caller in this turn, and the callback then finds nothing to do.
        """
        self._pending.append((sql, args))
        with contextlib.suppress(RuntimeError):  # no loop: the next flush (or close) commits it
            self._flush_soon()

    def _flush_soon(self) -> None:
        """The next turn of the loop commits what is queued: one callback for every write and
        waiter until then (RuntimeError without a running loop)."""
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self.flush_now)

    async def run(self) -> None:
        """Checkpoint now and then, in a thread (commits are ``_write``'s and the callers')."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            self.flush_now()
            if self._since_checkpoint:
                self._since_checkpoint = 0
                await asyncio.to_thread(self._checkpoint)

    async def flush(self) -> None:
        """Commit everything pending (for callers that await; it does not wait on a thread)."""
        self.flush_now()

    def flush_now(self) -> None:
        """Commit everything pending, in order, in one transaction (group commit); then wake
        the ``committed`` waiters (also when it failed: that is logged, not raised)."""
        for handle in (self._soon, self._pid_timer):
            if handle is not None:
                handle.cancel()
        self._soon = self._pid_timer = None
        turn, self._turn = self._turn, None
        try:
            self._commit()
        finally:
            if turn is not None:
                turn.set()

    def _commit(self) -> None:
        # The pid rows first: a run's DELETE, if queued, dropped its pid row already.
        batch = [(_UPSERT, row) for row in self._pids.values()] + self._pending
        self._pids, self._pending = {}, []
        if not batch or self._db is None:
            return
        db = self._db
        try:
            db.execute("BEGIN")
            # Consecutive writes of one kind go in one executemany; order is kept.
            for sql, group in itertools.groupby(batch, key=lambda write: write[0]):
                db.executemany(sql, [args for _, args in group])
            db.execute("COMMIT")
            self._since_checkpoint += 1
        except sqlite3.Error as exc:  # the runs go on; only their restart record is gone
            log.warning("run journal: %d write(s) failed: %r", len(batch), exc)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")

    def _checkpoint(self) -> None:
        # Its own connection: this runs in a worker thread while the loop goes on writing.
        try:
            with contextlib.closing(sqlite3.connect(self.path, timeout=1.0)) as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("run journal checkpoint skipped: %r", exc)


def _held_run(event_json: bytes, launch: bytes | None) -> HeldRun:
    event = parse_record(event_json)  # our own record, not received from anyone
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
