"""A run known only by its claim is closed when its agent and the leader both die.

Double fault: an agent is killed milliseconds after it started a run, before its ``started``
event left its outbox and before its next heartbeat listed the run; the leader, which alone
knew the run (from the agent's reply), dies before its lost pass for that agent. The next
leader's sources of open runs (the agent's events, its last heartbeat's list, the runs
accepted in replies to *this* master) all missed the run: it ended with no record at all, and
a ``redispatch_lost`` job's work was silently dropped. The run's claim (``natsched_claims``,
written by the agent before it starts anything) is on record in JetStream, though.

Deterministic here: the events stream refuses new messages (discard new at its current size,
as in test_recorded_failures.py) while the run starts, so its ``started`` event waits in the
agent's outbox; the agent heartbeats every few seconds and is killed as soon as the job's
witness line appears; the leader "dies" (its connection closed, as by kill -9) right after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from natsched import codec, subjects
from natsched.embedded import EmbeddedServer
from natsched.events import RunEvent, RunState, new_run_id
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import Process, eventually
from tests.faults.witness import (
    events_of,
    executions,
    lost_job,
    pool_agent,
    recorded,
    seen_by,
    started_agents,
    started_on,
)
from tests.helpers import apply, started_master, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults
SLOW_BEAT = "3"  # a1's heartbeat interval: its last heartbeat before death lists no run


async def test_a_run_only_its_claim_knows_is_recorded_lost_and_runs_again_once(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    url = nats_server.url
    a1 = spawn(
        "natsched-agent", "--name", "a1", "--state-dir", str(tmp_path / "a1"), "--pool", "p",
        url=url, log_name="agent-a1.log",
        env={"NATSCHED_AGENT_HEARTBEAT_INTERVAL": SLOW_BEAT, "NATSCHED_AGENT_PRIORITY": "1"},
    )  # fmt: skip
    pool_agent(spawn, url, tmp_path, "b1")
    first = await started_master(lambda: MasterService(conn, lease_ttl=2.0))
    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    try:
        await seen_by(first, "a1", "b1")
        spec = lost_job("long", witness)
        assert (await apply(nc, toml_jobs(spec, group="co")))["ok"]
        ended = RunEvent(
            run_id=new_run_id(),
            job="co.other",
            agent="ghost",
            state=RunState.FAILED,
            trigger=RunTrigger.MANUAL,
        )
        await js.publish(ended.subject, ended.to_json())  # not empty: max_msgs 0 would mean no limit
        info = await js.stream_info(subjects.EVENTS_STREAM)
        await js.update_stream(replace(info.config, discard=DiscardPolicy.NEW, max_msgs=info.state.messages))
        await _just_heartbeated(nc, "a1")  # the next one is 3 s away
        [run] = (await trigger(nc, "co.long"))["runs"]
        assert run["agent"] == "a1", run
        await eventually(lambda: started_on(witness, "a1"), 10, "the run started on a1")
        a1.kill()  # its job dies with it (guardian); its started event with its outbox
        assert first.nc is not None
        await first.nc.close()  # the leader dies too, before it found a1 silent
    finally:
        await first.__aexit__(None, None, None)
        await js.update_stream(info.config)
    last = await (await js.key_value(subjects.AGENTS_BUCKET)).get("a1")
    beat = codec.decode_heartbeat(last.value or b"", "a1")
    assert run["run_id"] not in beat.runs, "a1 heartbeated after the start: not the case tested here"
    assert not await recorded(nc, "co.long", run["run_id"]), "the started event was not held back"

    async with MasterService(conn, lease_ttl=2.0, unresponsive_after=1.0):
        await eventually(lambda: recorded(nc, "co.long", run["run_id"], "lost"), 15, "the run recorded lost")
        await eventually(lambda: started_on(witness, "b1"), 15, "the lost run ran again on b1")
        await asyncio.sleep(1.0)  # a second re-run would have started by now
        redone = [e for e in await events_of(nc, "co.long") if e["trigger"] == RunTrigger.LOST.value]
    starts = started_agents(witness)
    assert starts == ["a1", "b1"], executions(witness)
    assert {(e["agent"], e["detail"]["lost_run"]) for e in redone} == {("b1", run["run_id"])}, redone


async def _just_heartbeated(nc: Client, agent: str) -> None:
    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
    revision = (await kv.get(agent)).revision

    async def beat() -> bool:
        return (await kv.get(agent)).revision != revision

    await eventually(beat, 10, f"a new heartbeat of {agent}")
