"""Overlap policies on one agent (allow / forbid / replace / queue), with real processes.

The executor needs no NATS: its events wait in the SQLite outbox, read back here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.cache import JobCache
from agent.executor import MAX_QUEUED, JobExecutor
from agent.outbox import EventOutbox
from agent.output import LogStreamer
from agent.prepare import first_event
from agent.runner import ProcessRunner
from natsched.jobspec import parse_job
from natsched.models import JobSpec
from natsched.vocab import RunTrigger


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[JobExecutor]:
    async with JobCache(tmp_path / "cache.sqlite") as cache:
        outbox = EventOutbox(cache.db)
        await outbox.open()
        executor = JobExecutor(
            agent="a1", runner=ProcessRunner(), outbox=outbox, logs=LogStreamer("a1"), kill_grace=0.2
        )
        yield executor
        await executor.shutdown(1.0)


def spec(overlap: str, seconds: float) -> JobSpec:
    return parse_job(
        {
            "name": "j",
            "group": "ov",
            "command": ["sleep", str(seconds)],
            "overlap": overlap,
            "targets": {"agents": ["*"]},
        }
    )


async def events(executor: JobExecutor) -> list[dict[str, Any]]:
    await executor.outbox.flush(1.0)  # not connected: everything lands in SQLite
    db = executor.outbox._db
    async with db.execute("SELECT payload FROM outbox ORDER BY id") as cursor:
        return [json.loads(row[0]) for row in await cursor.fetchall()]


async def wait_idle(executor: JobExecutor) -> None:
    async with asyncio.timeout(15):
        while executor.running:  # noqa: ASYNC110 - polling the outcome
            await asyncio.sleep(0.02)


async def test_allow_runs_side_by_side(executor: JobExecutor) -> None:
    first = await executor.launch(spec("allow", 0.5), trigger=RunTrigger.MANUAL)
    second = await executor.launch(spec("allow", 0.5), trigger=RunTrigger.MANUAL)
    assert first.state == second.state == "started" and executor.running == 2
    await wait_idle(executor)


async def test_forbid_skips(executor: JobExecutor) -> None:
    first = await executor.launch(spec("forbid", 0.5), trigger=RunTrigger.MANUAL)
    second = await executor.launch(spec("forbid", 0.5), trigger=RunTrigger.MANUAL)
    assert first.state == "started" and second.state == "skipped"
    assert first.run_id in second.reason
    await wait_idle(executor)


async def test_replace_kills_the_running_one_first(executor: JobExecutor) -> None:
    first = await executor.launch(spec("replace", 30), trigger=RunTrigger.MANUAL)
    second = await executor.launch(spec("replace", 0.2), trigger=RunTrigger.MANUAL)
    assert second.state == "started" and executor.running == 1
    await wait_idle(executor)
    states = {(e["run_id"], e["state"]) for e in await events(executor)}
    assert (first.run_id, "killed") in states and (second.run_id, "succeeded") in states


async def test_queue_runs_after_the_running_one(executor: JobExecutor) -> None:
    first = await executor.launch(spec("queue", 0.5), trigger=RunTrigger.MANUAL)
    second = await executor.launch(spec("queue", 0.1), trigger=RunTrigger.MANUAL)
    assert second.state == "queued"  # answered at once, so a dispatcher is not kept waiting
    await asyncio.sleep(0.2)
    assert executor.running == 1  # waiting its turn
    await asyncio.sleep(0.5)
    await wait_idle(executor)
    recorded = await events(executor)
    order = [(e["run_id"], e["state"]) for e in recorded]
    assert order.index((first.run_id, "succeeded")) < order.index((second.run_id, "started"))
    assert (second.run_id, "queued") in order and (second.run_id, "succeeded") in order


async def test_queued_runs_are_recorded_when_the_agent_shuts_down(executor: JobExecutor) -> None:
    await executor.launch(spec("queue", 30), trigger=RunTrigger.MANUAL)
    waiting = await executor.launch(spec("queue", 0.1), trigger=RunTrigger.MANUAL)
    await executor.shutdown(0.2)
    states = {(e["run_id"], e["state"]): e for e in await events(executor)}
    assert states[(waiting.run_id, "skipped")]["reason"] == "agent shut down while queued"


async def test_a_trigger_storm_queues_at_most_the_limit_and_skips_the_rest(executor: JobExecutor) -> None:
    storm = [await executor.launch(spec("queue", 30), trigger=RunTrigger.MANUAL) for _ in range(1000)]
    states = [e.state.value for e in storm]
    assert states.count("started") == 1
    assert states.count("queued") == MAX_QUEUED == 100, "the documented default"
    skipped = [e for e in storm if e.state.value == "skipped"]
    assert len(skipped) == 1000 - 1 - MAX_QUEUED
    assert "100 runs already waiting" in skipped[0].reason
    recorded = {(e["run_id"], e["state"]) for e in await events(executor)}
    assert all((e.run_id, "skipped") in recorded for e in skipped), "each refusal is on record"


async def test_runs_due_together_start_at_once_and_what_must_wait_is_left_to_launch(
    executor: JobExecutor, tmp_path: Path
) -> None:
    """``start_together`` (a burst of mirror slots): the runs free to start are started and
    recorded (one that cannot start, failed); a forbid job already running, a queue job whose
    turn is taken and a run that must start another way (cwd) are left to ``launch``, untouched."""
    running = await executor.launch(spec("forbid", 5), trigger=RunTrigger.MANUAL)

    def job(name: str, command: list[str], **more: str) -> JobSpec:
        targets = {"agents": ["*"]}
        return parse_job({"name": name, "group": "b", "command": command, "targets": targets, **more})

    jobs = [
        *(job(f"a{i}", ["true"]) for i in range(3)),
        spec("forbid", 0.1),
        job("q", ["sleep", "0.3"], overlap="queue"),
        job("c", ["true"], cwd=str(tmp_path)),
        job("missing", [str(tmp_path / "no-such-program")]),
    ]
    runs = []
    for each in jobs:
        event = first_event("a1", each, trigger=RunTrigger.CRON, scheduled_at=time.time())
        runs.append(executor.ready_run(each, event, await executor.prepare(each, event, (), {})))
    assert await executor.start_together(runs) == [3, 5]
    started = {run_id for active in executor.active.values() for run_id in active}
    assert started == {running.run_id} | {runs[i].event.run_id for i in (0, 1, 2, 4)}
    # The queue job's turn is taken by the run started together: the next one waits.
    assert (await executor.launch(jobs[4], trigger=RunTrigger.MANUAL)).state == "queued"
    await executor.cancel(running.run_id)
    await wait_idle(executor)
    states = {(e["run_id"], e["state"]) for e in await events(executor)}
    for i in (0, 1, 2, 4):
        assert {(runs[i].event.run_id, "started"), (runs[i].event.run_id, "succeeded")} <= states
    assert not any(runs[i].event.run_id == run_id for i in (3, 5) for run_id, _ in states)
    assert (runs[6].event.run_id, "failed") in states  # could not start: recorded, the others unharmed
