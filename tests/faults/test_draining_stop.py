"""An agent that stops answers the run requests already on their way to it.

The server may send a run request to an agent's subscription before it has read the agent's
unsubscribe. Left unanswered, the master waited its dispatch timeout (5 s) and withdrew the
run: a slave run was recorded failed although its agent got it in time, a load-balance run
went to the next agent of the pool 5 s late. Here the server reads the stopping agent late
(a proxy delays its bytes), so such requests do reach it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from urllib.parse import urlparse

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from agent.responder import DRAIN_WAIT, STOP_WAIT, STOPPING
from agent.service import AgentService
from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from natsched.runmessages import RunReply, decode_run_reply
from natsched.settings import ConnectionSettings
from natsched.vocab import RunState
from tests.conftest import AgentFactory, eventually
from tests.faults.lagging import LaggingProxy
from tests.faults.witness import POOL, events_of, executions, seen_by, witness_job
from tests.helpers import apply, toml_jobs
from tests.master.test_chains import trigger

pytestmark = pytest.mark.faults
LAG = 0.5  # the server reads the stopping agent's unsubscribe this late


async def test_run_requests_on_their_way_to_a_stopping_agent_are_answered(
    master: MasterService, nc: Client, conn: ConnectionSettings, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """a1 stops (as on SIGTERM) while a slave run and a load-balance run are sent to it: each
    executes once, the slave run on a1, the load-balance one on b1 (a1 refused it at once)."""
    witness = tmp_path / "ran"
    async with LaggingProxy(urlparse(conn.url).port or 0) as proxy:
        a1 = await start_agent(
            "a1", settings=dataclasses.replace(conn, url=proxy.url), pools=frozenset({POOL}), priority=1
        )
        await start_agent("b1", pools=frozenset({POOL}), priority=2)
        await seen_by(master, "a1", "b1")
        jobs = [
            witness_job("each", witness, mode="slave", targets={"agents": ["a1"]}),
            witness_job("one", witness, mode="load-balance", targets={"pools": [POOL]}),  # a1 first
        ]
        assert (await apply(nc, toml_jobs(*jobs, group="d")))["ok"]
        answers = _answers_on(master, subjects.agent_run_subject("a1"))
        began = _began_stopping(a1)
        proxy.lag = LAG
        stopping = asyncio.create_task(a1.__aexit__(None, None, None))  # as on SIGTERM
        async with asyncio.timeout(10):
            await began.wait()  # its unsubscribes are on their way: the server reads them LAG s late
        each, one = await asyncio.gather(trigger(nc, "d.each"), trigger(nc, "d.one"))
        proxy.lag = 0  # the rest of the stop at full speed
        async with asyncio.timeout(30):
            await stopping
    # The slave run: a1 got it before it stopped, and ran it (it had nowhere else to go).
    [run] = each["runs"]
    assert run["ok"] and run["agent"] == "a1", run
    # The load-balance run: a1 refused it at once, and b1 of the pool ran it.
    [balanced] = one["runs"]
    assert balanced["ok"] and balanced["agent"] == "b1", balanced
    # a1 answered both, none was waited out (a timeout) and withdrawn.
    assert all(isinstance(a, RunReply) for a in answers) and len(answers) == 2, answers
    refusals = [a for a in answers if isinstance(a, RunReply) and a.run_id == balanced["run_id"]]
    assert [r.reason for r in refusals] == [STOPPING], answers
    await eventually(lambda: _ran(witness, 2), 10, "both runs executed")
    assert sorted(executions(witness)) == sorted([(run["run_id"], "a1"), (balanced["run_id"], "b1")])
    # The slave run's end went out before a1 was gone.
    states = [e["state"] for e in await events_of(nc, "d.each") if e["run_id"] == run["run_id"]]
    assert RunState.SUCCEEDED.value in states, states


@pytest.mark.parametrize("state", ["unanswered", "reconnecting", "closed"])
async def test_a_responder_stops_within_its_bound_whatever_its_connection(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    conn: ConnectionSettings,
    start_agent: AgentFactory,
    state: str,
) -> None:
    """Connected to a server that reads it no more (its drain's flush is never answered),
    reconnecting, or closed: stop() returns within its bound without raising, and what it
    unsubscribed is not subscribed again when the connection comes back."""
    async with LaggingProxy(urlparse(conn.url).port or 0) as proxy:
        a1 = await start_agent("a1", settings=dataclasses.replace(conn, url=proxy.url))
        assert a1.responder is not None and a1.nc is not None
        agent_nc = a1.nc
        if state == "unanswered":
            proxy.lag = 3600.0
        elif state == "reconnecting":
            nats_server.stop()
            await eventually(lambda: _true(agent_nc.is_reconnecting), 10, "a1 is reconnecting")
        else:
            await agent_nc.close()
        async with asyncio.timeout(DRAIN_WAIT + STOP_WAIT):
            await a1.responder.stop()
        if state == "closed":
            return
        proxy.lag = 0.0
        if state == "unanswered":
            await proxy.cut()  # a1 reconnects through it, its subscriptions replayed
        else:
            nats_server.start()
        await eventually(lambda: _back(agent_nc), 15, "a1 reconnected")
        await eventually(lambda: _true(nc.is_connected), 15, "the test's client reconnected")
        with pytest.raises(NoRespondersError):
            await nc.request(subjects.agent_run_subject("a1"), b"", timeout=5)


async def _true(value: bool) -> bool:
    return value


async def _back(agent_nc: Client) -> bool:
    """Reconnected, and the server has what the agent sent first (its subscriptions)."""
    if not agent_nc.is_connected:
        return False
    try:
        await agent_nc.flush(timeout=1)
    except Exception:  # noqa: BLE001 - gone again: not back yet
        return False
    return True


def _began_stopping(agent: AgentService) -> asyncio.Event:
    """Set once ``agent``'s responder has begun to stop (and got to its first wait)."""
    assert agent.responder is not None
    responder = agent.responder
    stop = responder.stop
    began = asyncio.Event()

    async def spied() -> None:
        began.set()  # the waiter runs when this task first waits, inside stop()
        await stop()

    responder.stop = spied  # type: ignore[method-assign]
    return began


async def _ran(witness: Path, times: int) -> bool:
    return len(executions(witness)) >= times


def _answers_on(master: MasterService, watched: str) -> list[RunReply | Exception]:
    """What the master's run requests on ``watched`` got back: the reply, or the error
    (a timeout: nobody answered)."""
    assert master.dispatcher is not None
    requests = master.dispatcher.requests
    ask = requests.request
    answers: list[RunReply | Exception] = []

    async def spied(
        subject: str, payload: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Msg:
        try:
            msg = await ask(subject, payload, timeout, headers)
        except Exception as exc:
            if subject == watched:
                answers.append(exc)
            raise
        if subject == watched:
            answers.append(decode_run_reply(msg.data))
        return msg

    requests.request = spied  # type: ignore[method-assign]
    return answers
