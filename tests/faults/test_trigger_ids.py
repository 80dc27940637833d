"""A trigger sent again with the same ``trigger_id`` (its reply was lost) starts the job once.

The only master is frozen (SIGSTOP) while a caller sends a trigger and, getting no answer,
sends it twice more: when the master wakes it handles all three. Without a trigger id each
request is a new start (the README says so); with one, the repeats get the first's runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from natsched import subjects
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.conftest import AgentFactory, Process, eventually, wait_for_api
from tests.faults.witness import executions, frozen, witness_job
from tests.helpers import apply, toml_jobs

pytestmark = pytest.mark.faults


async def test_a_trigger_repeated_with_its_id_while_the_master_was_frozen_runs_once(
    nats_server: EmbeddedServer,
    spawn: Callable[..., Process],
    nc: Client,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    witness = tmp_path / "witness"
    master = spawn("natsched", "master", url=nats_server.url, log_name="master.log")
    await asyncio.to_thread(wait_for_api, nats_server.url, master)
    await start_agent("s1")
    spec = witness_job("once", witness, mode="slave", targets={"agents": ["s1"]})
    assert (await apply(nc, toml_jobs(spec, group="ti")))["ok"]
    body = json.dumps({"trigger_id": "order-42"}).encode()
    with frozen(master):
        for _ in range(2):  # the caller's own retries: each times out
            with pytest.raises(NatsTimeoutError):
                await nc.request("natsched.trigger.ti.once", body, timeout=0.5)
    reply = json.loads((await nc.request("natsched.trigger.ti.once", body, timeout=10)).data)
    assert reply["ok"] and reply.get("repeat"), reply
    [run] = reply["runs"]

    async def ran() -> bool:
        return bool(executions(witness))

    await eventually(ran, 10, "the job ran")
    await asyncio.sleep(1.0)  # every request has been handled; a second run has written by now
    assert executions(witness) == [(run["run_id"], "s1")], "one run for three requests of one trigger id"


async def test_a_subject_message_published_again_with_its_msg_id_starts_its_job_once(
    master: MasterService, nc: Client, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """The subject-trigger side (README): a JetStream publish retried after a lost
    acknowledgement, with the same ``Nats-Msg-Id``, is stored once, so it starts its job once."""
    witness = tmp_path / "witness"
    await start_agent("s1")
    spec = witness_job(
        "paid", witness, mode="slave", targets={"agents": ["s1"]}, triggers=[{"subject": "pay.*"}]
    )
    assert (await apply(nc, toml_jobs(spec, group="ti")))["ok"]
    js = nc.jetstream()

    async def captured() -> bool:
        info = await js.stream_info(subjects.SUBJECTS_STREAM)
        return "pay.*" in (info.config.subjects or [])

    await eventually(captured, 10, "the masters' stream keeps pay.*")
    acks = [await js.publish("pay.done", b"{}", headers={"Nats-Msg-Id": "pay-7"}) for _ in range(3)]
    assert [a.duplicate for a in acks] == [None, True, True], acks

    async def ran() -> bool:
        return bool(executions(witness))

    await eventually(ran, 10, "the job ran")
    await asyncio.sleep(1.0)  # a second run would have come by now
    assert len(executions(witness)) == 1, executions(witness)
