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

from natsched.embedded import EmbeddedServer
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
