"""A dispatch the master gave up on never executes (run claims), counted by real executions.

The agent that the master gives up on is a real ``natsched-agent`` process, frozen with
SIGSTOP past the dispatch timeout and woken with SIGCONT: the request waits in its socket
and is read after the master has moved on. Every job appends ``$NATSCHED_RUN_ID
$NATSCHED_AGENT`` to a witness file when it really runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.dispatch import REQUEST_TIMEOUT
from natsched.master.service import MasterService
from tests.conftest import Process, eventually
from tests.faults.witness import agent_process, executions, frozen, seen_by, witness_job
from tests.helpers import apply, stream_events, toml_jobs

pytestmark = pytest.mark.faults
WAKE_SETTLE = 2.0  # after SIGCONT: ample time for the agent to act on the request it held


async def trigger(nc: Client, job_key: str) -> dict[str, Any]:
    msg = await nc.request(f"natsched.trigger.{job_key}", b"{}", timeout=REQUEST_TIMEOUT * 3)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def test_a_load_balance_run_given_up_on_a_frozen_agent_runs_once_on_the_next(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    a3 = agent_process(spawn, nats_server.url, "a3", tmp_path / "a3", "--pool", "lb")
    agent_process(spawn, nats_server.url, "a2", tmp_path / "a2", "--pool", "lb")
    await seen_by(master, "a3", "a2")
    spec = witness_job(
        "once", witness, mode="load-balance", targets={"pools": ["lb"], "agents": ["a3", "a2", "a1"]}
    )
    await apply(nc, toml_jobs(spec, group="claim"))

    with frozen(a3):
        reply = await trigger(nc, "claim.once")  # a3 holds the request, unread, past the timeout
    [run] = reply["runs"]
    assert run["ok"] and run["agent"] == "a2", reply

    async def ran_on_a2() -> bool:
        return (run["run_id"], "a2") in executions(witness)

    await eventually(ran_on_a2, 10, "the run executed on a2")
    await asyncio.sleep(WAKE_SETTLE)  # a3 is awake and has read the stale request by now
    assert executions(witness) == [(run["run_id"], "a2")], "executed once, on a2 only"
    assert "withdrawn by master" in a3.output(), "a3 says why it did not run it"
    states = [(e["agent"], e["state"]) for e in await stream_events(nc) if e["run_id"] == run["run_id"]]
    assert ("a3", "started") not in states and ("a2", "succeeded") in states, states


async def test_a_slave_run_recorded_offline_never_runs_when_its_agent_wakes(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    a3 = agent_process(spawn, nats_server.url, "a3", tmp_path / "a3")
    await seen_by(master, "a3")
    await apply(
        nc, toml_jobs(witness_job("work", witness, mode="slave", targets={"agents": ["a3"]}), group="sl")
    )

    with frozen(a3):
        reply = await trigger(nc, "sl.work")
    [run] = reply["runs"]
    assert not run["ok"] and run["reason"].startswith("agent offline"), reply
    await asyncio.sleep(WAKE_SETTLE)  # a3 reads the request it held while frozen
    assert executions(witness) == [], "a run recorded failed (agent offline) never executes"
    events = [e for e in await stream_events(nc) if e["run_id"] == run["run_id"]]
    assert [e["state"] for e in events] == ["failed"], events
    assert "agent offline" in events[0]["reason"]

    later = await trigger(nc, "sl.work")  # awake again: a3 runs new dispatches as before
    [again] = later["runs"]
    assert again["ok"], later

    async def ran() -> bool:
        return executions(witness) == [(again["run_id"], "a3")]

    await eventually(ran, 10, "the next run executed on a3")
