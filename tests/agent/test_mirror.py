"""Mirror jobs: agents fire them from their own cache, with or without master and NATS."""

from __future__ import annotations

import asyncio
import collections
import json
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.vocab import RunTrigger
from tests.conftest import AgentFactory, eventually
from tests.helpers import apply, job, stream_events, toml_jobs

EVERY_SECOND = [{"cron": "* * * * * *"}]


def _finals(events: list[dict[str, Any]], job_key: str) -> list[dict[str, Any]]:
    return [e for e in events if e["job"] == job_key and e["state"] not in ("started", "queued")]


async def test_every_second_job_runs_on_two_agents_independently(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    a1 = await start_agent("a1")
    a2 = await start_agent("a2")
    await apply(
        nc,
        toml_jobs(
            job("tick", command=["sh", "-c", "echo $NATSCHED_AGENT"], triggers=EVERY_SECOND), group="m"
        ),
    )

    async def both_ran_three_times() -> bool:
        finals = _finals(await stream_events(nc), "m.tick")
        per_agent = collections.Counter(e["agent"] for e in finals if e["state"] == "succeeded")
        return per_agent["a1"] >= 3 and per_agent["a2"] >= 3

    await eventually(both_ran_three_times, 15, "three runs on each agent")
    events = await stream_events(nc)
    for event in _finals(events, "m.tick"):
        assert event["output_tail"] == f"{event['agent']}\n"
    # One run per agent per slot: no slot fired twice on one agent.
    slots = collections.Counter((e["agent"], e["scheduled_at"]) for e in _finals(events, "m.tick"))
    assert max(slots.values()) == 1
    assert a1.failed is not None and not a1.failed.done() and a2.failed is not None and not a2.failed.done()


async def test_master_stopped_mirror_jobs_keep_running(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    async with MasterService(conn):
        agent = await start_agent("a1")
        await apply(nc, toml_jobs(job("tick", triggers=EVERY_SECOND), group="m"))
        await eventually(lambda: _cached(agent, "m.tick"), 10)
    # The master is gone now.
    before = await _count_succeeded(nc, "m.tick")
    await asyncio.sleep(3.2)
    assert await _count_succeeded(nc, "m.tick") >= before + 2


async def _cached(agent: AgentService, key: str) -> bool:
    return await agent.cache.get(key) is not None


async def _count_succeeded(nc: Client, key: str) -> int:
    return sum(1 for e in await stream_events(nc) if e["job"] == key and e["state"] == "succeeded")


async def test_nats_down_runs_continue_and_events_arrive_exactly_once(
    master: MasterService, nc: Client, nats_server: EmbeddedServer, start_agent: AgentFactory
) -> None:
    agent = await start_agent("a1")
    await apply(nc, toml_jobs(job("tick", triggers=EVERY_SECOND), group="m"))
    await eventually(lambda: _cached(agent, "m.tick"), 10)
    await eventually(lambda: _count_at_least(nc, "m.tick", 1), 10, "first run before the outage")
    assert agent.executor is not None
    nats_server.kill()
    await asyncio.sleep(5)
    # Started and succeeded events of at least 3 runs fired during the outage wait in the outbox.
    assert agent.outbox is not None and agent.outbox.depth >= 6, "events of runs during the outage are kept"
    nats_server.start()
    await eventually(lambda: _outbox_empty(agent), 30, "outbox drained after NATS came back")
    events = await stream_events(nc)
    ids = collections.Counter((e["run_id"], e["state"]) for e in events)
    assert max(ids.values()) == 1, "an event stored twice"
    started = {e["run_id"] for e in events if e["state"] == "started"}
    finished = {e["run_id"] for e in events if e["state"] == "succeeded"}
    assert len(finished) >= 4
    assert finished <= started
    # Nothing lost: slots are consecutive seconds with no hole during the outage.
    slots = sorted(e["scheduled_at"] for e in events if e["state"] == "succeeded")
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(abs(g - 1.0) < 0.01 for g in gaps), (
        gaps,
        [(e["state"], e["scheduled_at"], e["run_id"]) for e in events],
    )


async def _count_at_least(nc: Client, key: str, n: int) -> bool:
    return await _count_succeeded(nc, key) >= n


async def _outbox_empty(agent: AgentService) -> bool:
    return agent.outbox is not None and agent.outbox.depth == 0


async def test_forbid_overlap_skips_and_records_skipped(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("a1")
    await apply(
        nc,
        toml_jobs(job("slow", command=["sleep", "2.5"], triggers=EVERY_SECOND, overlap="forbid"), group="m"),
    )

    async def skipped_seen() -> bool:
        return any(e["job"] == "m.slow" and e["state"] == "skipped" for e in await stream_events(nc))

    await eventually(skipped_seen, 15, "a skipped event")
    skipped = [e for e in await stream_events(nc) if e["state"] == "skipped"]
    assert "overlap forbid" in skipped[0]["reason"]


async def test_timeout_kills_the_whole_process_tree(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! >> {pids}; setsid sleep 61 & echo $! >> {pids}; sleep 62"
    await start_agent("a1", kill_grace=0.5)
    at = time.time() + 1.5
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(at, UTC).isoformat()
    await apply(
        nc, toml_jobs(job("hang", command=script, shell=True, timeout=1, triggers=[{"at": when}]), group="m")
    )

    async def timed_out() -> bool:
        return any(e["job"] == "m.hang" and e["state"] == "timed_out" for e in await stream_events(nc))

    await eventually(timed_out, 15, "timed_out event")
    import psutil

    for pid in map(int, pids.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid


async def test_large_output_truncated_in_event_complete_in_log_stream(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("a1")
    chunks: dict[str, bytearray] = collections.defaultdict(bytearray)

    async def on_log(msg: Any) -> None:
        chunks[msg.subject.rsplit(".", 1)[-1]] += msg.data

    await nc.subscribe("natsched.log.>", cb=on_log)
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(time.time() + 1.5, UTC).isoformat()
    # 200k numbered lines: ~1.3 MB, far above the 4 KiB event tail.
    await apply(
        nc, toml_jobs(job("loud", command=["seq", "1", "200000"], triggers=[{"at": when}]), group="m")
    )

    async def done() -> bool:
        return any(e["job"] == "m.loud" and e["state"] == "succeeded" for e in await stream_events(nc))

    await eventually(done, 20)
    event = next(e for e in await stream_events(nc) if e["job"] == "m.loud" and e["state"] == "succeeded")
    expected = "".join(f"{i}\n" for i in range(1, 200001)).encode()
    assert event["output_bytes"] == len(expected)
    assert len(event["output_tail"].encode()) <= 4096 and expected.endswith(event["output_tail"].encode())
    await eventually(lambda: _complete(chunks, event["run_id"], len(expected)), 10, "whole output in the log")
    assert bytes(chunks[event["run_id"]]) == expected
    # The stream captured it too, not just live subscribers.
    info = await nc.jetstream().stream_info(subjects.LOGS_STREAM)
    assert info.state.bytes >= len(expected)


async def _complete(chunks: dict[str, bytearray], run_id: str, size: int) -> bool:
    return len(chunks.get(run_id, b"")) >= size


async def test_restart_applies_each_misfire_policy(
    master: MasterService, nc: Client, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(
        name="a1", state_dir=tmp_path / "a1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    every = 3.0
    jobs = [
        job(name, command=["true"], triggers=[{"every": every}], misfire=policy, misfire_cap=2)
        for name, policy in (("skip", "skip"), ("once", "run-once"), ("all", "run-all"))
    ]
    async with AgentService(config, conn) as agent:
        await agent.synced(10)
        await apply(nc, toml_jobs(*jobs, group="mf"))
        await eventually(lambda: _count_at_least(nc, "mf.all", 1), 15, "jobs ran before the restart")
    stopped_at = time.time()
    # Stay away for at least 3 slots, and come back mid-interval (1.5 s after a slot), so the
    # latest slot is late (beyond the 1 s on-time grace) for every job.
    away_until = (stopped_at // every + 4) * every + 1.5
    await asyncio.sleep(away_until - time.time())
    restart_begin = time.time()
    async with AgentService(config, conn):
        await asyncio.sleep(0.5)  # catch-up happens at start-up, from the cache
    events = await stream_events(nc)

    def caught_up(key: str) -> list[dict[str, Any]]:
        return [
            e
            for e in events
            if e["job"] == key and e["state"] == "started" and stopped_at < e["scheduled_at"] <= restart_begin
        ]

    assert caught_up("mf.skip") == []
    once = caught_up("mf.once")
    assert len(once) == 1 and once[0]["scheduled_at"] > restart_begin - every  # the latest slot
    caught = caught_up("mf.all")
    assert len(caught) == 2  # the 2 most recent of >= 3 missed slots (misfire_cap = 2)
    assert caught[1]["scheduled_at"] - caught[0]["scheduled_at"] == every
    assert all(float(e["detail"]["late_ms"]) > 1000 for e in once + caught)


def test_events_are_json_for_any_client() -> None:
    from natsched.events import RunEvent, RunState

    event = RunEvent(
        run_id="r1",
        job="g.j",
        agent="a1",
        state=RunState.SUCCEEDED,
        trigger=RunTrigger.CRON,
        started_at=1.0,
        ended_at=3.5,
        exit_code=0,
    )
    data = json.loads(event.to_json())
    assert data["v"] == 1 and data["state"] == "succeeded" and data["duration"] == 2.5
    assert event.subject == "natsched.event.a1.g.j.succeeded" and event.msg_id == "r1.succeeded"


async def test_agent_shutdown_lets_runs_finish_then_kills_and_records(
    master: MasterService, nc: Client, conn: ConnectionSettings, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    config = AgentConfig(name="a1", state_dir=tmp_path / "a1", shutdown_grace=1.0, kill_grace=0.3)
    soon = datetime.fromtimestamp(time.time() + 1.2, UTC).isoformat()
    async with AgentService(config, conn) as agent:
        await agent.synced(10)
        await apply(
            nc,
            toml_jobs(
                job("short", command=["sleep", "0.5"], triggers=[{"at": soon}]),
                job("long", command=["sleep", "30"], triggers=[{"at": soon}]),
                group="sd",
            ),
        )
        await eventually(lambda: _running(agent, 2), 10, "both runs started")
    events = {(e["job"], e["state"]): e for e in await stream_events(nc)}
    assert ("sd.short", "succeeded") in events
    killed = events[("sd.long", "killed")]
    assert "shutdown" in killed["reason"]


async def _running(agent: AgentService, n: int) -> bool:
    return agent.running == n


async def test_agent_started_while_nats_is_down_runs_its_mirror_jobs(
    master: MasterService, nc: Client, nats_server: EmbeddedServer, conn: ConnectionSettings, tmp_path: Path
) -> None:
    config = AgentConfig(
        name="a1", state_dir=tmp_path / "a1", heartbeat_interval=0.5, sync_check_interval=0.5
    )
    async with AgentService(config, conn) as agent:
        await agent.synced(10)
        await apply(nc, toml_jobs(job("tick", triggers=EVERY_SECOND), group="off"))
        await eventually(lambda: _cached(agent, "off.tick"), 10)
    nats_server.kill()
    async with AgentService(config, conn) as agent:  # NATS is down for the whole start-up
        assert not agent.connected.is_set()
        await asyncio.sleep(3.2)
        assert agent.outbox is not None
        assert agent.outbox.depth >= 4, "started+succeeded of at least two runs fired from the cache"
        nats_server.start()
        await eventually(lambda: _outbox_empty(agent), 30, "outbox drained once NATS is back")
    succeeded = [e for e in await stream_events(nc) if e["job"] == "off.tick" and e["state"] == "succeeded"]
    assert len({e["run_id"] for e in succeeded}) >= 2
