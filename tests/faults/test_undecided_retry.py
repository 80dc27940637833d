"""A run recorded failed because NATS could not say who claimed it is retried only if it did
not run after all.

The master gives up on a slave target that does not answer (frozen) and withdraws the run's
claim; when that write is not answered either (JetStream refused: a stream without a leader),
the run is recorded ``failed`` with ``claim undecided``, though the agent may still take it
when it wakes. A retry of that failure ran the job a second time beside the first. Now the retry first
withdraws the run itself: lost to the agent, the run went ahead (no retry); won, it never runs
and the retry goes (the agent killed while frozen). The claims
bucket refuses writes here by configuration (discard new at its current size), so the test is
deterministic; in production it is a cluster electing a stream leader.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import DiscardPolicy

from natsched import subjects
from natsched.claims import Claim, encode_claim
from natsched.embedded import EmbeddedServer
from natsched.master.service import MasterService
from tests.conftest import Process, eventually
from tests.faults.witness import agent_process, events_of, executions, seen_by, witness_job
from tests.helpers import apply, toml_jobs

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("wakes", [True, False], ids=["agent-wakes", "agent-dies"])
async def test_an_undecided_run_is_retried_only_if_it_did_not_go_ahead(
    master: MasterService,
    nats_server: EmbeddedServer,
    nc: Client,
    spawn: Callable[..., Process],
    tmp_path: Path,
    wakes: bool,
) -> None:
    witness = tmp_path / "witness"
    s1 = agent_process(spawn, nats_server.url, "s1", tmp_path / "s1")
    await seen_by(master, "s1")
    once = witness_job(
        "once",
        witness,
        mode="slave",
        targets={"agents": ["s1"]},
        retries={"attempts": 1, "backoff": 2.5, "jitter": 0},  # time for s1 to restart
    )
    assert (await apply(nc, toml_jobs(once, group="ud")))["ok"]
    js = nc.jetstream()
    kv = await js.key_value(subjects.CLAIMS_BUCKET)
    await kv.put(subjects.agent_claim_key("ghost", "0-0"), encode_claim(Claim(agent="ghost", nonce="0")))
    claims = await js.stream_info(subjects.kv_stream(subjects.CLAIMS_BUCKET))
    full = replace(claims.config, discard=DiscardPolicy.NEW, max_msgs=claims.state.messages)
    os.kill(s1.popen.pid, signal.SIGSTOP)
    try:
        await js.update_stream(full)  # no more claims: the master's withdrawal is not written
        try:
            msg = await nc.request("natsched.trigger.ud.once", b"{}", timeout=30)
        finally:
            await js.update_stream(claims.config)
    finally:
        if wakes:
            os.kill(s1.popen.pid, signal.SIGCONT)
        else:
            s1.kill()  # the request dies with it, untaken
    [run] = json.loads(msg.data)["runs"]
    assert not run["ok"] and run["reason"].startswith("claim undecided"), run
    if not wakes:
        agent_process(spawn, nats_server.url, "s1", tmp_path / "s1")  # for the retry (slave: same agent)

    async def ran() -> bool:
        return len(executions(witness)) >= 1

    await eventually(ran, 15, "the run, or its retry, ran")
    await asyncio.sleep(3)  # past the backoff: a retry beside the run would have run by now
    ran_ids = [line[0] for line in executions(witness)]
    retries = [e["run_id"] for e in await events_of(nc, "ud.once") if e["trigger"] == "retry"]
    if wakes:
        assert ran_ids == [run["run_id"]] and not retries, f"s1 took it when it woke: no retry ({ran_ids})"
    else:
        assert len(ran_ids) == 1 and ran_ids[0] in retries, f"it never ran: retried once ({ran_ids})"
