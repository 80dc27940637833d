"""Lost agents and nats-server restarts: nothing lost, nothing run twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.runs import get_run
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, Process, eventually
from tests.faults.witness import events_of, seen_by
from tests.helpers import apply, job, toml_jobs

pytestmark = pytest.mark.faults
UNRESPONSIVE = 2.0


async def test_an_agent_killed_mid_run_is_lost_and_its_run_redispatched(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    start_agent: AgentFactory,
    tmp_path: Any,
) -> None:
    async with MasterService(conn, unresponsive_after=UNRESPONSIVE) as master:
        victim = spawn(
            "natsched-agent",
            "--name", "victim", "--pool", "lb", "--state-dir", str(tmp_path / "victim"),
            url=nats_server.url,
            env={"NATSCHED_AGENT_PRIORITY": "1", "NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5"},
        )  # fmt: skip
        await start_agent("survivor", pools=frozenset({"lb"}), priority=5)

        await seen_by(master, "victim", timeout=15)
        await apply(
            nc,
            toml_jobs(
                job(
                    "long",
                    mode="load-balance",
                    targets={"pools": ["lb"]},
                    command=["sleep", "4"],
                    redispatch_lost=True,
                ),
                group="lost",
            ),
        )
        reply = json.loads((await nc.request("natsched.trigger.lost.long", b"{}", timeout=10)).data)
        first = reply["runs"][0]
        assert first["agent"] == "victim", reply

        async def on_record() -> bool:  # killed mid-run, once the run is on record
            return any(e["state"] == "started" for e in await events_of(nc, "lost.long"))

        await eventually(on_record, 10, "the run's started event")
        victim.kill()  # kill -9 mid-run
        killed_at = time.time()

        async def lost_and_redone() -> bool:
            events = await events_of(nc, "lost.long")
            lost = [e for e in events if e["state"] == "lost" and e["run_id"] == first["run_id"]]
            redone = [
                e
                for e in events
                if e["state"] == "succeeded" and e["detail"].get("lost_run") == first["run_id"]
            ]
            return bool(lost and redone)

        await eventually(lost_and_redone, 20, "lost event and the run redone on the survivor")
        events = await events_of(nc, "lost.long")
        [lost] = [e for e in events if e["state"] == "lost"]
        assert lost["agent"] == "victim" and "unresponsive" in lost["reason"]
        assert lost["at"] - killed_at <= UNRESPONSIVE + 3, (
            "marked lost within the unresponsive period (+ checks)"
        )
        [redone] = [e for e in events if e["state"] == "succeeded"]
        assert redone["agent"] == "survivor" and redone["trigger"] == "lost"
        await asyncio.sleep(1.0)
        assert len([e for e in await events_of(nc, "lost.long") if e["state"] == "lost"]) == 1, "lost once"


async def test_nats_server_restart_mid_run_loses_nothing(
    master: MasterService, nats_server: EmbeddedServer, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("r1")
    await apply(
        nc,
        toml_jobs(
            job(
                "steady",
                mode="slave",
                targets={"agents": ["r1"]},
                triggers=[{"every": "1s"}],
                command=["sleep", "1.5"],
                misfire="run-all",
            ),
            group="rs",
        ),
    )

    async def running() -> bool:
        return any(e["state"] == "started" for e in await events_of(nc, "rs.steady"))

    await eventually(running, 10, "a run started")
    nats_server.stop()
    await asyncio.sleep(2.0)  # runs end while the server is away: their events wait in the outbox
    nats_server.start()
    restarted = time.time()

    async def scheduling_again() -> bool:
        events = await events_of(nc, "rs.steady")
        return any(e["state"] == "started" and e["scheduled_at"] > restarted + 1 for e in events)

    await eventually(scheduling_again, 20, "the master schedules again after the restart")
    await asyncio.sleep(2.5)
    events = await events_of(nc, "rs.steady")
    started = {e["run_id"] for e in events if e["state"] == "started"}
    ended = {e["run_id"] for e in events if e["state"] == "succeeded"}
    unfinished = started - ended
    assert len(unfinished) <= 2, f"every run but the newest ones ended and said so: {unfinished}"
    slots = [e["scheduled_at"] for e in events if e["state"] == "started"]
    assert len(slots) == len(set(slots)), "no slot started twice"
    assert master.failed is not None and not master.failed.done(), "the master survived the restart"
    assert master.lease is not None and master.lease.held(), "and still leads"


async def test_a_run_finished_while_cut_off_is_reconciled_not_duplicated(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Any,
) -> None:
    async with MasterService(conn, unresponsive_after=UNRESPONSIVE) as master:
        agent = spawn(
            "natsched-agent", "--name", "cut", "--state-dir", str(tmp_path / "cut"),
            url=nats_server.url, env={"NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5"},
        )  # fmt: skip

        await seen_by(master, "cut", timeout=15)
        await apply(
            nc,
            toml_jobs(
                job("work", mode="slave", targets={"agents": ["cut"]}, command=["sleep", "3"]), group="pt"
            ),
        )
        run = json.loads((await nc.request("natsched.trigger.pt.work", b"{}", timeout=10)).data)["runs"][0]

        async def started() -> bool:  # cut off mid-run, once the run is on record
            return any(e["state"] == "started" for e in await events_of(nc, "pt.work"))

        await eventually(started, 10, "the run's started event")
        os.kill(agent.popen.pid, signal.SIGSTOP)  # the agent is cut off; its process keeps running
        try:

            async def marked_lost() -> bool:
                return any(e["state"] == "lost" for e in await events_of(nc, "pt.work"))

            await eventually(marked_lost, 15, "run marked lost")
            await asyncio.sleep(2.0)  # the job's process ends while its agent is frozen
        finally:
            os.kill(agent.popen.pid, signal.SIGCONT)

        async def reconciled() -> bool:
            return any(e["state"] == "succeeded" for e in await events_of(nc, "pt.work"))

        await eventually(reconciled, 15, "the agent reported what really happened")
        summary = await get_run(nc.jetstream(), run["run_id"])
        assert summary.latest.state.value == "succeeded" and summary.states == [
            "started",
            "lost",
            "succeeded",
        ]
        assert len({e["run_id"] for e in await events_of(nc, "pt.work")}) == 1, "one run, not two"
