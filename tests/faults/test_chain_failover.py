"""A completion delivered to a master that then dies is handled by the next master promptly.

The only master is frozen (SIGSTOP) so that the upstream's completion is delivered to it
and stays unacknowledged, then killed -9; a new master starts. The shared consumer's
``ack_wait`` decides when the new one gets the completion (it was 60 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.lease import DEFAULT_TTL
from tests.conftest import AgentFactory, Process, eventually, wait_for_api
from tests.helpers import apply, stream_events, toml_jobs
from tests.master.test_chains import on, trigger

pytestmark = pytest.mark.faults


async def events_of(nc: Client, key: str, state: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and e["state"] == state]


async def start_master(spawn: Callable[..., Process], server: EmbeddedServer, name: str) -> Process:
    process = spawn("natsched", "master", url=server.url, log_name=f"{name}.log")
    await asyncio.to_thread(wait_for_api, server.url, process)
    return process


async def freeze_then_kill_after(nc: Client, master: Process, key: str) -> None:
    """Freeze the master, wait until ``key`` succeeded (its event went to the frozen master), kill it."""
    os.kill(master.popen.pid, signal.SIGSTOP)
    try:
        await eventually(lambda: _has(nc, key, "succeeded"), 10, f"{key} succeeded")
        await asyncio.sleep(0.5)  # the server pushes the completion to its only consumer member
    finally:
        master.kill()


async def _has(nc: Client, key: str, state: str) -> bool:
    return bool(await events_of(nc, key, state))


async def test_a_completion_held_by_a_dead_master_starts_the_chain_within_the_lease(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], nc: Client, start_agent: AgentFactory
) -> None:
    first = await start_master(spawn, nats_server, "master-1")
    await start_agent("s1")
    jobs = toml_jobs(on("s1", "up", 1), on("s1", "down", triggers=[{"after": ["up"]}]), group="cf")
    assert (await apply(nc, jobs))["ok"]
    await trigger(nc, "cf.up")
    await freeze_then_kill_after(nc, first, "cf.up")
    await start_master(spawn, nats_server, "master-2")
    ready = time.time()
    await eventually(lambda: _has(nc, "cf.down", "started"), 20, "the downstream job started")
    took = (await events_of(nc, "cf.down", "started"))[0]["at"] - ready
    print(f"downstream started {took:.1f}s after the new master was ready")
    assert took <= DEFAULT_TTL + 1, f"the completion waited {took:.1f}s for the new master"


async def test_a_fan_in_counts_an_upstream_that_completed_in_time_but_was_handled_late(
    nats_server: EmbeddedServer, spawn: Callable[..., Process], nc: Client, start_agent: AgentFactory
) -> None:
    first = await start_master(spawn, nats_server, "master-1")
    await start_agent("s1")
    jobs = toml_jobs(
        on("s1", "root"),
        on("s1", "quick", triggers=[{"after": ["root"]}]),
        on("s1", "slow", 1, triggers=[{"after": ["root"]}]),
        on("s1", "join", triggers=[{"after": ["quick", "slow"], "wait": "all", "timeout": "3s"}]),
        group="fi",
    )
    assert (await apply(nc, jobs))["ok"]
    await trigger(nc, "fi.root")
    await eventually(lambda: _has(nc, "fi.quick", "succeeded"), 10, "quick succeeded")
    await asyncio.sleep(0.2)  # handled: the fan-in now waits for slow
    await freeze_then_kill_after(nc, first, "fi.slow")
    await asyncio.sleep(3)  # past the fan-in's timeout, counted from quick's completion
    await start_master(spawn, nats_server, "master-2")
    await eventually(lambda: _has(nc, "fi.join", "succeeded"), 20, "the joined job ran")
    assert not await events_of(nc, "fi.join", "failed"), "slow completed within the timeout"
