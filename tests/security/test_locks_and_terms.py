"""Attack: blocking or hijacking load-balance jobs with a forged lock or leader term."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from natsched import codec, subjects
from natsched.client import AdminClient
from natsched.events import new_run_id
from natsched.kvscan import scan
from natsched.runmessages import RunRequest, decode_run_reply
from natsched.vocab import RunTrigger
from tests.conftest import eventually
from tests.helpers import file_lines, job, toml_jobs
from tests.security.hostile import POOL, Secured


async def test_agents_cannot_forge_locks_and_nobody_can_push_the_term(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    async with secured.services("a1", "a2"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "single",
                        mode="load-balance",
                        targets={"pools": [POOL]},
                        overlap="forbid",
                        command=append,
                    ),
                    job("on1", mode="slave", targets={"agents": ["a1"]}, command=append),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        master = await secured.connect("natsched-master")
        js = master.jetstream()

        # a1 names a live a2 as the holder of the job's lock: directly in KV, or by asking a
        # master in a2's name. Both are refused by the server.
        a1 = await secured.connect("agent-a1")
        fake_holder = codec.pack({"run_id": new_run_id(), "agent": "a2", "since": 0.0})
        lock = subjects.kv_subject_prefix(subjects.STATE_BUCKET) + subjects.lock_key("sec.single")
        for subject, body in (
            (lock, fake_holder),
            (subjects.lock_subject("a2"), codec.pack({"op": "acquire", "job": "sec.single", "run_id": "r1"})),
        ):
            with pytest.raises(Exception):  # noqa: B017 - denied publish: no answer ever comes
                await a1.request(subject, body, timeout=1)
        assert subjects.lock_key("sec.single") not in await scan(js, subjects.STATE_BUCKET)

        # A run request claiming term 10**9 (a master login, or a server without auth).
        entry = (await scan(js, subjects.JOBS_BUCKET))["sec.on1"]
        forged = RunRequest(
            run_id=new_run_id(),
            spec=codec.decode_job(entry.value, "sec.on1"),
            trigger=RunTrigger.MANUAL,
            master="intruder",
            term=10**9,
        )
        answer = decode_run_reply(
            (await master.request(subjects.agent_run_subject("a1"), forged.encode(), timeout=10)).data
        )
        assert not answer.ok and "lease" in answer.reason, answer

        # The real master still dispatches to a1, and the load-balance job runs (not "overlap forbid").
        for name in ("sec.on1", "sec.single"):
            started = json.loads(
                (await admin.nc.request(subjects.trigger_subject(name), b"{}", timeout=10)).data
            )
            assert started["ok"] and started["runs"][0]["ok"], started
        await eventually(lambda: _count(witness, 2), 15, "both real runs happened")
        await asyncio.sleep(0.3)
        assert forged.run_id not in witness.read_text() and len(file_lines(witness)) == 2


async def _count(path: Path, n: int) -> bool:
    return len(file_lines(path)) >= n
