"""Attack: an agent login joins a pool it has no credential for, to take or block its runs.

An agent's heartbeat (which it writes itself) names its pools. The masters picked a
load-balance job's agent from those heartbeats and sent the run to that agent's own
subject, so agent a3, whose credential allows no pool, only had to claim pool ``p`` in its
heartbeat to be sent every run of the pool's jobs (and answer "started" without running
any), to receive the slave runs of jobs aimed at the pool, and to hold the cluster-wide lock
of any job (or of names no job has) so that the job was skipped "overlap forbid" for as
long as a3 lived. The membership key that proves a pool must name the agent and the pool: a
key nats-server itself wrote there for a3 (the acknowledgement of a3's heartbeat write, sent to
the reply subject a3 chose) proves nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.client import AdminClient
from natsched.events import new_run_id
from natsched.kvscan import scan
from natsched.runmessages import RunReply, decode_run_request
from tests.conftest import eventually
from tests.helpers import file_lines, job, toml_jobs
from tests.security.hostile import POOL, Secured, violations


async def write_membership_through_the_server(a3: Client) -> None:
    """a3 cannot write ``member.p.a3`` itself, but it can have nats-server write there: the
    acknowledgement of a JetStream publish goes to whatever reply subject the publisher gave,
    unchecked against its permissions."""
    key = f"{subjects.kv_subject_prefix(subjects.CLAIMS_BUCKET)}{subjects.pool_member_key(POOL, 'a3')}"
    await a3.publish(f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a3", b"x", reply=key)
    await a3.flush()
    claims = await a3.jetstream().key_value(subjects.CLAIMS_BUCKET)
    await eventually(lambda: has_key(claims, subjects.pool_member_key(POOL, "a3")), 5, "the server wrote it")


async def has_key(kv: KeyValue, key: str) -> bool:
    try:
        return bool((await kv.get(key)).value)
    except KeyNotFoundError:
        return False


@pytest.mark.parametrize("route", ["heartbeat", "ack"])
async def test_an_agent_cannot_join_a_pool_by_its_heartbeat(
    secured: Secured, tmp_path: Path, route: str
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job("lb", mode="load-balance", targets={"pools": [POOL]}, command=append),
                    job("each", mode="slave", targets={"pools": [POOL]}, command=append),
                    job(
                        "single",
                        mode="load-balance",
                        targets={"pools": [POOL]},
                        overlap="forbid",
                        command=append,
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply

        # a3 (no pool in its credential) writes a heartbeat naming pool p, first in line, and
        # answers every run request sent to it "started" without running anything.
        a3 = await secured.connect("agent-a3")
        if route != "heartbeat":
            await write_membership_through_the_server(a3)
        agents = await a3.jetstream().key_value(subjects.AGENTS_BUCKET)
        real = codec.decode_heartbeat((await agents.get("a1")).value or b"", "a1")
        asked: list[str] = []

        async def hijack(msg: Msg) -> None:
            request = decode_run_request(msg.data)
            asked.append(request.spec.key)
            await msg.respond(RunReply(ok=True, agent="a3", run_id=request.run_id, state="started").encode())

        await a3.subscribe(subjects.agent_run_subject("a3"), cb=hijack)
        forged = dataclasses.replace(
            real, agent="a3", pools=(POOL,), priority=0, running=0, runs={}, sent_at=time.time(), pid=1
        )
        await agents.put("a3", codec.encode_heartbeat(forged))

        # ... and asks a master for the lock of the pool's forbid job, and of a job nobody has.
        for name in ("sec.single", "zz.zz"):
            answer = codec.unpack(
                (
                    await a3.request(
                        subjects.lock_subject("a3"),
                        codec.pack({"op": "acquire", "job": name, "run_id": new_run_id()}),
                        timeout=5,
                    )
                ).data,
                "lock reply",
            )
            assert not answer["ok"], f"a3 took the lock of {name}: {answer}"
        master = await secured.connect("natsched-master")
        state = await scan(master.jetstream(), subjects.STATE_BUCKET)
        assert not {subjects.lock_key("sec.single"), subjects.lock_key("zz.zz")} & set(state)

        for name in ("sec.lb", "sec.each", "sec.single"):
            started = json.loads(
                (await admin.nc.request(subjects.trigger_subject(name), b"{}", timeout=10)).data
            )
            assert started["ok"], started
            assert [run["agent"] for run in started["runs"]] == ["a1"], started
        await eventually(lambda: _count(witness, 3), 15, "the three runs happened on a1")
        await asyncio.sleep(0.3)
        assert [line.split()[1] for line in file_lines(witness)] == ["a1"] * 3
        assert asked == [], f"a3 was sent runs of pool {POOL}: {asked}"


async def _count(path: Path, n: int) -> bool:
    return len(file_lines(path)) >= n


async def test_a_pool_member_reads_only_the_pool_runs_handed_to_it(secured: Secured) -> None:
    """Outside the pool's queue group a member would see every run request of the pool (args,
    env), also those handed to another member, and could answer them first."""
    errors: list[str] = []
    a1 = await secured.connect("agent-a1", errors=errors)
    subject = subjects.pool_run_subject(POOL)
    await a1.subscribe(subject)
    await a1.flush(timeout=5)
    await a1.flush(timeout=5)
    assert violations(errors, subject), errors
    errors.clear()
    await a1.subscribe(subject, queue=subjects.pool_queue(POOL))
    await a1.flush(timeout=5)
    await a1.flush(timeout=5)
    assert errors == []
