"""The run journal: after a crash, the next agent closes what was going and queues what waited.

No NATS needed: events wait in the SQLite outbox and are read back from there. The crash is
simulated by abandoning an executor (no shutdown) and opening a new one on the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.cache import JobCache
from agent.executor import JobExecutor
from agent.journal import PID_DELAY, RunJournal
from agent.outbox import EventOutbox
from agent.output import LogStreamer
from agent.recovery import Recovery
from agent.runner import ProcessRunner
from natsched.events import RunEvent, RunState
from natsched.jobspec import parse_job
from natsched.models import JobSpec
from natsched.vocab import RunTrigger


def spec(seconds: float, overlap: str = "queue") -> JobSpec:
    return parse_job(
        {
            "name": "j",
            "group": "jr",
            "command": ["sleep", str(seconds)],
            "overlap": overlap,
            "targets": {"agents": ["*"]},
        }
    )


async def executor_on(cache: JobCache) -> tuple[JobExecutor, Recovery]:
    outbox = EventOutbox(cache.db)
    await outbox.open()
    journal = RunJournal(cache.path.with_name("runs.sqlite"))
    left = await journal.open()
    executor = JobExecutor(
        agent="a1", runner=ProcessRunner(), outbox=outbox, logs=LogStreamer("a1"), journal=journal
    )
    return executor, Recovery(left, executor)


async def events(executor: JobExecutor) -> list[dict[str, Any]]:
    await executor.outbox.flush(1.0)
    async with executor.outbox._db.execute("SELECT payload FROM outbox ORDER BY id") as cursor:
        return [json.loads(row[0]) for row in await cursor.fetchall()]


async def test_after_a_crash_the_running_run_is_lost_and_the_queued_ones_run(tmp_path: Path) -> None:
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        crashed, _ = await executor_on(cache)
        finished = await crashed.launch(spec(0.05, "allow"), trigger=RunTrigger.MANUAL)
        await asyncio.wait_for(asyncio.gather(*crashed._waiters), 5)  # ended normally: not in the journal
        going = await crashed.launch(spec(30), trigger=RunTrigger.MANUAL)
        waiting = [await crashed.launch(spec(0.05), trigger=RunTrigger.MANUAL) for _ in range(2)]
        assert going.state == "started" and [w.state for w in waiting] == ["queued", "queued"]
        assert crashed.journal is not None
        await crashed.journal.flush()
        assert going.pid is not None
        os.killpg(going.pid, signal.SIGKILL)  # what the guardian does when the agent dies
        for task in [*crashed._queued, *crashed._waiters]:
            task.cancel()  # the crashed agent is gone: none of its tasks goes on
        await asyncio.gather(*crashed._queued, *crashed._waiters, return_exceptions=True)

        restarted, recovery = await executor_on(cache)
        await recovery.at_start()
        # Until the queued runs have ended (between one run's end and the next one's start,
        # neither may be running or queued for a moment: wait on the outcome, not on that).
        async with asyncio.timeout(10):
            while True:
                states = {(e["run_id"], e["state"]): e for e in await events(restarted)}
                if all((w.run_id, "succeeded") in states for w in waiting):
                    break
                await asyncio.sleep(0.05)
            await asyncio.gather(*restarted._waiters)
        assert (finished.run_id, "lost") not in states, "a run that ended is not reported again"
        lost = states[(going.run_id, "lost")]
        assert "stopped while the run was going" in lost["reason"]
        for run in waiting:
            assert (run.run_id, "succeeded") in states, "queued again after the restart, and ran"
        assert restarted.journal is not None
        assert await restarted.journal.open() == [], "nothing left over"


class _CrashingSpawn(ProcessRunner):
    """The agent dies while the process is being spawned: nothing after this point happens."""

    def __init__(self) -> None:
        super().__init__()
        self.reached = asyncio.Event()

    async def start(self, spec: Any, on_output: Any = None) -> Any:
        self.reached.set()
        await asyncio.Event().wait()  # never returns: the process is "running", its event unsent


async def test_a_run_killed_with_its_agent_while_starting_is_still_recorded(tmp_path: Path) -> None:
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        crashed, _ = await executor_on(cache)
        spawning = _CrashingSpawn()
        crashed.runner = spawning
        launch = asyncio.create_task(crashed.launch(spec(30, "allow"), trigger=RunTrigger.MANUAL))
        await asyncio.wait_for(spawning.reached.wait(), 5)
        launch.cancel()  # kill -9 of the agent: no started event ever left it
        await asyncio.gather(launch, return_exceptions=True)
        assert await events(crashed) == [], "nothing was published before the agent died"

        restarted, recovery = await executor_on(cache)
        await recovery.at_start()
        recorded = [(e["state"], e["job"]) for e in await events(restarted)]
        assert recorded == [("started", "jr.j"), ("lost", "jr.j")], (
            "the next agent records the run it may have started: an execution is never unrecorded"
        )


async def test_a_running_run_s_pid_reaches_the_journal_on_its_own_within_pid_delay(tmp_path: Path) -> None:
    """The pid row waits for another commit, but not for long: with nothing else going on, the
    next agent still learns the group to clean up (recovery's kill_leftovers) after PID_DELAY."""
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        executor, _ = await executor_on(cache)
        started = await executor.launch(spec(30, "allow"), trigger=RunTrigger.MANUAL)
        assert started.pid is not None
        try:
            await asyncio.sleep(PID_DELAY * 3)
            with contextlib.closing(sqlite3.connect(cache.path.with_name("runs.sqlite"))) as db:
                [(row,)] = db.execute("SELECT event FROM held_runs").fetchall()
            assert json.loads(row)["pid"] == started.pid
        finally:
            os.killpg(started.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*executor._waiters), 5)


async def test_rows_of_both_forms_are_read_back_whole(tmp_path: Path) -> None:
    """Rows are msgpack records now; a row an older agent wrote (JSON) is still read, so an
    upgrade in the middle of a run still reports it."""
    event = RunEvent(
        run_id="r1",
        job="jr.j",
        agent="a1",
        state=RunState.STARTED,
        trigger=RunTrigger.MANUAL,
        scheduled_at=12.5,
        started_at=13.0,
        pid=4242,
        detail={"file": "/in/a.csv"},
    )
    older = event.moved_to(RunState.STARTED, pid=4343)
    path = tmp_path / "runs.sqlite"
    journal = RunJournal(path)
    assert await journal.open() == []
    journal.started(event)  # its record
    journal.close()
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO held_runs (run_id, state, event) VALUES (?, ?, ?)",
            ("r2", "started", older.to_json().replace(b'"r1"', b'"r2"')),
        )
    held = await RunJournal(path).open()
    assert [h.event for h in held] == [event, replace(older, run_id="r2")]


async def test_a_start_cancelled_while_its_row_waits_for_the_shared_commit_still_runs_and_is_closed(
    tmp_path: Path,
) -> None:
    """With other runs going, a start's row waits one turn for a commit shared with the runs
    starting in that turn. A cancellation then must not leave a committed row without its run
    (the next start would report lost a run that never ran): the run starts, ends, is recorded."""
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        executor, _ = await executor_on(cache)
        going = await executor.launch(spec(0.5, "allow"), trigger=RunTrigger.MANUAL)
        starting = asyncio.create_task(executor.launch(spec(0.1, "allow"), trigger=RunTrigger.MANUAL))
        await asyncio.sleep(0)  # the second start is waiting for the commit of its row
        starting.cancel()
        results = await asyncio.gather(starting, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError), "the caller is cancelled all the same"
        async with asyncio.timeout(10):
            await asyncio.gather(*executor._waiters)
        states = sorted((e["run_id"] == going.run_id, e["state"]) for e in await events(executor))
        assert states == [(False, "started"), (False, "succeeded"), (True, "started"), (True, "succeeded")]
        assert executor.journal is not None
        assert await executor.journal.open() == [], "no row left behind"
