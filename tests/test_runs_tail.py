"""``natsched runs`` reads the end of the events stream, not all of it."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from natsched import subjects
from natsched.buckets import ensure_all
from natsched.events import MSG_ID_HEADER, RunEvent, RunState, new_run_id
from natsched.runs import TAIL_WINDOW, list_runs, tail_runs
from natsched.vocab import RunTrigger

OLD = 10_000


async def publish(nc: Client, job: str, count: int, state: RunState = RunState.SUCCEEDED) -> list[str]:
    js = nc.jetstream()
    ids = []
    for start in range(0, count, 1000):
        acks = []
        for _ in range(min(1000, count - start)):
            event = RunEvent(run_id=new_run_id(), job=job, agent="a1", state=state, trigger=RunTrigger.CRON)
            ids.append(event.run_id)
            acks.append(js.publish(event.subject, event.to_json(), headers={MSG_ID_HEADER: event.msg_id}))
        await asyncio.gather(*acks)
    return ids


async def test_the_newest_runs_come_from_a_small_tail_of_a_big_stream(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_all(js)
    await publish(nc, "old.job", OLD)
    recent = await publish(nc, "new.job", 30, RunState.FAILED)
    runs, read = await tail_runs(js, subjects.EVENTS_SUBJECTS, want=20)
    assert [r.latest.run_id for r in runs] == sorted(recent, reverse=True)[:20]
    assert read <= TAIL_WINDOW, f"read {read} events of {OLD + 30}"
    # A job whose runs are old is still found: the window grows until it has them.
    old = await list_runs(js, job="old.job", limit=5)
    assert len(old) == 5 and all(r.latest.job == "old.job" for r in old)
    failed = await list_runs(js, state="failed", limit=50)
    assert len(failed) == 30
