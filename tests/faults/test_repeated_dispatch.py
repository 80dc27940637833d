"""A load-balance run whose dispatch a new master repeats runs once, on one agent.

A chained (or subject-triggered, held, lost-redispatched) run has a run id derived from what
started it, so a master that takes over a dispatch its predecessor died in sends the same
run id again: the agent that already took it answers without running it twice. But a
load-balance run may go to another agent the second time (the first one is busy with it
now, or less idle), whose own claim key is free: the run ran on both.

Here: ``down`` (load-balance, ``balance = "running"``) is dispatched by the only master to
``a1``, frozen, so the master waits for its answer; the master is killed -9; ``a1`` wakes,
takes the run and runs it; a new master gets the completion again and picks ``b1``, the
idler agent now.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched import subjects
from natsched.embedded import EmbeddedServer
from tests.conftest import Process, eventually, said, wait_for_api
from tests.faults.witness import agent_process, events_of, executions, frozen, start_lines, witnessed
from tests.helpers import apply, job, toml_jobs
from tests.master.test_chains import on, trigger

pytestmark = pytest.mark.faults


async def _master(spawn: Callable[..., Process], server: EmbeddedServer, name: str) -> Process:
    process = spawn("natsched", "master", url=server.url, log_name=f"{name}.log")
    await asyncio.to_thread(wait_for_api, server.url, process)
    return process


async def _heartbeating(nc: Client, *names: str) -> None:
    agents = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)

    async def all_there() -> bool:
        try:
            keys = set(await agents.keys())
        except Exception:  # noqa: BLE001 - no keys yet
            return False
        return set(names) <= keys

    await eventually(all_there, 20, f"{names} heartbeating")


async def test_a_load_balance_dispatch_repeated_by_the_next_master_runs_on_one_agent(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], nc: Client, tmp_path: Path
) -> None:
    witness = tmp_path / "witness"
    first = await _master(spawn, nats_server, "master-1")
    url = nats_server.url
    a1 = agent_process(spawn, url, "a1", tmp_path / "a1", "--pool", "p")
    agent_process(spawn, url, "b1", tmp_path / "b1", "--pool", "p")
    agent_process(spawn, url, "u1", tmp_path / "u1")
    await _heartbeating(nc, "a1", "b1", "u1")
    down = job(
        "down",
        mode="load-balance",
        targets={"pools": ["p"]},
        balance="running",
        command=witnessed(3, witness),
        triggers=[{"after": ["up"]}],
    )
    assert (await apply(nc, toml_jobs(on("u1", "up"), down, group="rd")))["ok"]
    await asyncio.sleep(1.0)  # the master's directory has every agent's heartbeat
    with frozen(a1):  # a1, the first of two idle agents by name, gets the request and sits on it
        await trigger(nc, "rd.up")

        async def up_done() -> bool:
            return bool([e for e in await events_of(nc, "rd.up") if e["state"] == "succeeded"])

        await eventually(up_done, 10, "up succeeded")
        await asyncio.sleep(0.5)  # the master has sent down's request to a1 and waits for it
        first.kill()

    async def a1_runs_it() -> bool:
        return any(line[1:] == ("a1", "start") for line in executions(witness))

    await eventually(a1_runs_it, 10, "a1 took the run it was sent and runs it")
    await asyncio.sleep(1.0)  # a1's heartbeat says it is running one: b1 is the idler now
    second = await _master(spawn, nats_server, "master-2")  # gets the completion again (ack_wait)
    await eventually(lambda: said(second, "-> rd.down"), 15, "the new master dispatched down again")
    await asyncio.sleep(0.5)  # a second run, had there been one, has written its start
    starts = start_lines(witness)
    assert len(starts) == 1, f"down ran more than once: {executions(witness)}"
