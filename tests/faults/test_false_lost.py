"""A nats-server restart or freeze must not make healthy agents "lost" (nor their runs run twice).

After a reconnect the master's heartbeat watch resumed ~11 s late here, while the agents
heartbeated again within 0.5 s: judged on that silence, healthy agents were marked lost
and ``redispatch_lost`` started a second copy. A frozen server (SIGSTOP, a VM pause: no
disconnect) did the same when it woke (bench.chaos seed 5551212): the heartbeats written
meanwhile had not landed when the master judged the silence it had not heard.
Executions are counted from a witness file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import AgentFactory, Process, eventually
from tests.faults.witness import (
    agent_process,
    events_of,
    executions,
    frozen,
    seen_by,
    started_on,
    witnessed,
)
from tests.helpers import apply, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults


async def test_a_server_restart_marks_no_healthy_agent_lost_and_runs_nothing_twice(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    async with MasterService(conn, unresponsive_after=3.0) as master:
        agent_process(spawn, nats_server.url, "steady", tmp_path / "steady", "--pool", "lb", priority=1)
        await start_agent("spare", pools=frozenset({"lb"}), priority=5)

        async def steady_up() -> bool:
            return master.dispatcher is not None and master.dispatcher.directory.get("steady") is not None

        await eventually(steady_up, 15, "agent heartbeating")
        await apply(
            nc,
            toml_jobs(
                job(
                    "lb",
                    mode="load-balance",
                    targets={"pools": ["lb"]},
                    command=witnessed(6, witness),
                    redispatch_lost=True,
                ),
                job(
                    "mirror",
                    mode="mirror",
                    targets={"agents": ["steady"]},
                    command=witnessed(6, witness),
                    triggers=[{"at": _soon(1.0)}],
                ),
                group="fl",
            ),
        )
        reply = json.loads((await nc.request("natsched.trigger.fl.lb", b"{}", timeout=10)).data)
        assert reply["runs"][0]["agent"] == "steady", reply

        async def both_started() -> bool:
            started = {e["job"] for e in await stream_events(nc) if e["state"] == "started"}
            return started >= {"fl.lb", "fl.mirror"}

        await eventually(both_started, 10, "a load-balance and a mirror run in flight")
        nats_server.kill()  # kill -9
        await asyncio.sleep(2.0)
        nats_server.start()
        back = time.monotonic()

        async def ended() -> bool:
            states = [(e["job"], e["state"]) for e in await stream_events(nc)]
            return ("fl.lb", "succeeded") in states and ("fl.mirror", "succeeded") in states

        await eventually(ended, 20, "both runs ended and said so")
        # Give a late judgement its chance: past the unresponsive period and the watch's delay.
        await asyncio.sleep(max(0.0, 14.0 - (time.monotonic() - back)))
        events = await stream_events(nc)
        lost = [e for e in events if e["state"] == "lost"]
        runs = executions(witness)
        print("lost events:", lost, "\nexecutions:", runs)
        assert lost == [], "no healthy agent was judged lost"
        for key in ("fl.lb", "fl.mirror"):
            states = [e["state"] for e in await events_of(nc, key)]
            assert states.count("started") == 1 and states[-1] == "succeeded", (key, states)
        starts = [r[0] for r in runs if r[2] == "start"]
        assert len(starts) == 2 == len(set(starts)), "one execution of each run, none redone"


async def test_a_frozen_server_marks_no_healthy_agent_lost_and_runs_nothing_twice(
    conn: ConnectionSettings,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    unresponsive = 3.0
    async with MasterService(conn, unresponsive_after=unresponsive) as master:
        steady = agent_process(
            spawn, nats_server.url, "steady", tmp_path / "steady", "--pool", "lb", priority=1
        )
        await start_agent("spare", pools=frozenset({"lb"}), priority=5)
        await seen_by(master, "steady", "spare")
        await apply(
            nc,
            toml_jobs(
                job(
                    "lb",
                    mode="load-balance",
                    targets={"pools": ["lb"]},
                    command=witnessed(6, witness),
                    redispatch_lost=True,
                ),
                group="fz",
            ),
        )
        reply = json.loads((await nc.request("natsched.trigger.fz.lb", b"{}", timeout=10)).data)
        assert reply["runs"][0]["agent"] == "steady", reply
        await eventually(lambda: started_on(witness, "steady"), 10, "the run started on steady")
        pid = nats_server.pid
        assert pid is not None
        # The host of the server and of steady pauses (a VM), past the unresponsive period and
        # within a request's 5 s timeout: the master's questions asked meanwhile are answered
        # when the server wakes, and steady heartbeats again a second later, well within the
        # unresponsive period the master could hear.
        with frozen(steady):
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(unresponsive + 1.5)
            finally:
                os.kill(pid, signal.SIGCONT)
            woke = time.monotonic()
            await asyncio.sleep(1.0)

        async def ended() -> bool:
            return "succeeded" in [e["state"] for e in await events_of(nc, "fz.lb")]

        await eventually(ended, 15, "the run ended and said so")
        # A judgement of the frozen time comes at the wake: give it the unresponsive period.
        await asyncio.sleep(max(0.0, unresponsive + 1.5 - (time.monotonic() - woke)))
        lost = [e for e in await stream_events(nc) if e["state"] == "lost"]
        runs = executions(witness)
        print("lost events:", lost, "\nexecutions:", runs)
        assert lost == [], "no healthy agent was judged lost"
        starts = [r for r in runs if r[2] == "start"]
        assert [r[1] for r in starts] == ["steady"], "one execution, on steady, none redone"


def _soon(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds + 1))
