"""Master failover: kill -9 the leader, freeze it past its lease; no slot missed or run twice."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.cli.masters import collect_masters
from natsched.embedded import EmbeddedServer
from natsched.master.lease import LeaderLease
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, Process, eventually, wait_for_api
from tests.helpers import apply, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults
TTL = 2.0
JOBS = 4


def storm() -> str:
    """Every-second jobs that catch up every slot they missed (misfire run-all)."""
    return toml_jobs(
        *(
            job(
                f"tick{i}",
                mode="slave",
                targets={"agents": ["s1"]},
                triggers=[{"every": "1s"}],
                misfire="run-all",
                misfire_cap=100,
            )
            for i in range(JOBS)
        ),
        group="storm",
    )


async def masters(conn: ConnectionSettings) -> list[dict[str, Any]]:
    return await collect_masters(conn, 0.5)


async def leader_pid(conn: ConnectionSettings) -> tuple[int, str]:
    leaders = [m for m in await masters(conn) if m["leader"]]
    assert len(leaders) == 1, leaders
    # master ids are <host>-<pid>-<random>
    return int(leaders[0]["master"].rsplit("-", 2)[1]), leaders[0]["master"]


async def start_masters(spawn: Callable[..., Process], server: EmbeddedServer) -> dict[int, Process]:
    started = {}
    for n in range(2):
        process = spawn(
            "natsched", "master", "--lease-ttl", str(TTL), url=server.url, log_name=f"master-{n}.log"
        )
        await asyncio.to_thread(wait_for_api, server.url, process)
        started[process.popen.pid] = process
    return started


async def slots(nc: Client) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for e in await stream_events(nc):
        if e["state"] == "started" and e["job"].startswith("storm."):
            out.setdefault(e["job"], []).append(e["scheduled_at"])
    return out


async def start_storm(
    spawn: Callable[..., Process],
    server: EmbeddedServer,
    conn: ConnectionSettings,
    nc: Client,
    start_agent: AgentFactory,
) -> dict[int, Process]:
    """Two masters (one leads), agent s1, and the every-second jobs applied: pid -> master."""
    processes = await start_masters(spawn, server)
    await start_agent("s1")
    await eventually(lambda: _one_leader(conn), 10, "a leader")
    assert (await apply(nc, storm()))["ok"]
    return processes


def assert_each_slot_once(by_job: dict[str, list[float]], through: float) -> None:
    """Every slot from each job's first one to ``through`` started exactly once."""
    assert len(by_job) == JOBS, by_job.keys()
    for key, fired in by_job.items():
        doubled = [slot for slot, n in Counter(fired).items() if n > 1]
        assert not doubled, f"{key}: slots run twice: {doubled}"
        first = min(fired)
        expected = {first + i for i in range(int(through - first) + 1)}
        missing = sorted(expected - set(fired))
        assert not missing, f"{key}: slots never run: {missing}"


async def test_killing_the_leader_in_a_storm_loses_and_doubles_no_slot(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    spawn: Callable[..., Process],
    nc: Client,
    start_agent: AgentFactory,
) -> None:
    processes = await start_storm(spawn, nats_server, conn, nc, start_agent)
    await asyncio.sleep(3)
    pid, old = await leader_pid(conn)
    processes[pid].kill()  # kill -9
    killed_at = time.time()
    await eventually(lambda: _one_leader(conn), TTL + 5, "the standby took over")
    took_over = time.time() - killed_at
    _, new = await leader_pid(conn)
    assert new != old
    assert took_over <= TTL + 2.5, f"takeover took {took_over:.1f}s (lease {TTL}s)"
    await asyncio.sleep(3)
    through = time.time() - 1.5  # slots up to here have been dispatched and started
    assert_each_slot_once(await slots(nc), through)


async def test_a_frozen_leader_does_not_dispatch_when_it_wakes(
    nats_server: EmbeddedServer,
    conn: ConnectionSettings,
    spawn: Callable[..., Process],
    nc: Client,
    start_agent: AgentFactory,
) -> None:
    processes = await start_storm(spawn, nats_server, conn, nc, start_agent)
    await asyncio.sleep(2)
    pid, old = await leader_pid(conn)
    os.kill(pid, signal.SIGSTOP)  # a VM pause, a stuck process: past its lease
    try:
        await eventually(lambda: _one_leader(conn), TTL + 5, "the standby took over")
        await asyncio.sleep(1.5)
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(3)
    assert_each_slot_once(await slots(nc), time.time() - 1.5)
    woke = processes[pid].output()
    assert "is no longer the leader" in woke, woke[-2000:]
    _, leader = await leader_pid(conn)
    assert leader != old, "the woken master did not take the lease back"


async def _one_leader(conn: ConnectionSettings) -> bool:
    return len([m for m in await masters(conn) if m["leader"]]) == 1


async def test_lease_steps_down_after_a_freeze_on_its_own_clock(nc: Client) -> None:
    """The fencing rule without processes: a renewal older than the ttl is no lease."""
    from natsched.buckets import ensure_all

    js = nc.jetstream()
    await ensure_all(js)
    state = await js.key_value("natsched_state")
    now = [1000.0]
    first = LeaderLease(state, "m1", ttl=2.0, clock=lambda: now[0])
    second = LeaderLease(state, "m2", ttl=2.0, clock=lambda: now[0])
    await first._stand_by()
    assert first.held() and first.term == 1
    await second._stand_by()
    assert not second.is_leader.is_set() and second.leader == "m1"
    now[0] += 2.5  # m1 froze: no renewal for longer than the ttl
    assert not first.held(), "a stale lease is not held, before any I/O"
    await second._stand_by()
    assert second.held() and second.term == 2
    await first._renew()
    assert not first.is_leader.is_set(), "the woken leader steps down"
