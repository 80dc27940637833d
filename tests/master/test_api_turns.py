"""The admin API of one master: a request waiting on an agent holds back no other request."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched import codec, subjects
from natsched.events import MSG_ID_HEADER, RunEvent, RunState, new_run_id
from natsched.master.service import MasterService
from natsched.vocab import RunTrigger
from tests.helpers import api, apply, job, toml_jobs


async def test_a_cancel_waiting_on_an_agent_holds_back_no_other_request(
    master: MasterService, nc: Client
) -> None:
    """The agent "slow" takes the cancel request and does not answer (the master waits up to
    10 s); the master answers a ping, a jobs list and an apply meanwhile."""
    started = RunEvent(
        run_id=new_run_id(), job="g.j", agent="slow", state=RunState.STARTED, trigger=RunTrigger.MANUAL
    )
    await nc.jetstream().publish(started.subject, started.to_json(), headers={MSG_ID_HEADER: started.msg_id})
    held: asyncio.Queue[Msg] = asyncio.Queue()
    await nc.subscribe(subjects.agent_cancel_subject("slow"), cb=held.put)
    cancel = asyncio.create_task(api(nc, subjects.API_RUNS_CANCEL, {"run_id": started.run_id}, timeout=15))
    async with asyncio.timeout(5):
        request = await held.get()  # the master is waiting on the agent now
    async with asyncio.timeout(3):  # well before the cancel's 10 s
        assert (await api(nc, subjects.API_PING, {}))["ok"]
        assert (await apply(nc, toml_jobs(job("j"), group="g")))["ok"]
        assert (await api(nc, subjects.API_JOBS_LIST, {"group": "g"}))["ok"]
    assert not cancel.done()
    await request.respond(codec.pack({"ok": True}))  # the agent answers at last
    async with asyncio.timeout(5):
        reply = await cancel
    assert reply["ok"] and reply["cancelled"], reply
