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
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import api

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.lease import DEFAULT_TTL
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
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


@pytest.mark.parametrize("survivor", [0, 1])
async def test_two_masters_started_together_each_follows_the_chains_alone(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path, survivor: int
) -> None:
    """Both masters race to create the shared consumers; whichever is left alone must get the
    completions (the loser of the race listened on its own inbox, where nothing came)."""
    masters = [MasterService(conn), MasterService(conn)]
    await asyncio.gather(*(master.__aenter__() for master in masters))
    try:
        js = nc.jetstream()
        for durable in (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE):
            info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
            assert info.config.deliver_subject == subjects.master_deliver_subject(durable), info.config
        await masters[1 - survivor].__aexit__(None, None, None)
        await start_agent("s1")
        witness = tmp_path / "down.ran"
        down = on("s1", "down", triggers=[{"after": ["up"]}])
        down["command"] = ["sh", "-c", f"echo ran >> {witness}"]
        assert (await apply(nc, toml_jobs(on("s1", "up"), down, group="tg")))["ok"]
        await trigger(nc, "tg.up")
        await eventually(lambda: _has(nc, "tg.down", "succeeded"), 15, "the downstream job ran")
        await asyncio.sleep(1)
        assert witness.read_text() == "ran\n"
    finally:
        await masters[survivor].__aexit__(None, None, None)


async def test_a_consumer_an_older_master_made_on_its_own_inbox_is_moved_to_the_shared_subject(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A chains consumer whose deliver subject is one master's private inbox (older versions,
    or the loser of the creation race) is moved to the fixed subject, position kept."""
    async with MasterService(conn):
        pass  # the stream and buckets exist now; its consumers are replaced below
    js = nc.jetstream()
    await js.delete_consumer(subjects.EVENTS_STREAM, subjects.CHAINS_DURABLE)
    old = api.ConsumerConfig(
        durable_name=subjects.CHAINS_DURABLE,
        deliver_subject="_INBOX_master.someone-elses-inbox",
        deliver_group=subjects.CHAINS_DURABLE,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=2.0,
        deliver_policy=api.DeliverPolicy.NEW,
    )
    await js.add_consumer(subjects.EVENTS_STREAM, config=old)
    async with MasterService(conn):
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.CHAINS_DURABLE)
        assert info.config.deliver_subject == subjects.master_deliver_subject(subjects.CHAINS_DURABLE)
        await start_agent("s1")
        witness = tmp_path / "down.ran"
        down = on("s1", "down", triggers=[{"after": ["up"]}])
        down["command"] = ["sh", "-c", f"echo ran >> {witness}"]
        assert (await apply(nc, toml_jobs(on("s1", "up"), down, group="mv")))["ok"]
        await trigger(nc, "mv.up")
        await eventually(lambda: _has(nc, "mv.down", "succeeded"), 15, "the downstream job ran")
        assert witness.read_text() == "ran\n"
