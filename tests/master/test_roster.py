"""The record of agent lives (``natsched/master/roster.py``) on a real nats-server."""

from __future__ import annotations

import time

from nats.aio.client import Client

from natsched import subjects
from natsched.buckets import ensure_all
from natsched.master.roster import AgentRoster
from natsched.models import Heartbeat


def _life(agent: str, started_at: float) -> Heartbeat:
    return Heartbeat(
        agent=agent, version="test", protocol=1, sent_at=time.time(), started_at=started_at,
        load1=0.0, cpu_percent=0.0, memory_percent=0.0, running=0, max_concurrency=4,
    )  # fmt: skip


async def test_a_life_another_leader_removed_is_not_taken_for_written(nc: Client) -> None:
    """Leader A writes a1's life; leader B, after A, closed a1's runs (a1 was frozen) and removed
    it, and lost the lease before a1, back, was written again; A, leading again, reads the
    record: a1's life must be written again, or an a1 that then dies while no master runs is
    judged by nobody (its runs open for ever)."""
    js = nc.jetstream()
    await ensure_all(js)
    state = await js.key_value(subjects.STATE_BUCKET)
    roster, life = AgentRoster(js, state), _life("a1", 1000.0)
    await roster.record(life)
    assert roster.recorded(life)
    await state.delete(subjects.agent_life_key("a1"))  # B's forget
    assert await roster.lives() == {}
    assert not roster.recorded(life), "the removed life is written again on the next pass"
