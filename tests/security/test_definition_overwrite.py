"""Attack: an agent has nats-server overwrite a job's definition, so the job never runs again.

Agents may not write ``natsched_jobs``. But nats-server sends the acknowledgement of a
JetStream publish to whatever reply subject the publisher gave, unchecked against its
permissions: agent a1 writes its own heartbeat with the reply subject
``$KV.natsched_jobs.sec.echo``, and the acknowledgement (``{"stream": …, "seq": …}``) becomes
the job's stored value. Every master and agent then saw an invalid definition: the job ran
nowhere until an admin applied it again, also after restarts. A master now puts back the
definition it held when a value no master writes (not a msgpack map) replaces it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from natsched import subjects
from natsched.client import AdminClient
from tests.conftest import eventually
from tests.helpers import job, toml_jobs
from tests.security.hostile import Secured, secured_server


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    async with secured_server(tmp_path) as server:
        yield server


async def test_an_agent_cannot_wipe_a_definition_through_a_jetstream_acknowledgement(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "runs.txt"
    append = ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job("echo", mode="slave", targets={"agents": ["a1"]}, command=append), group="sec"
                ),
            },
        )
        assert reply["ok"], reply
        master = await secured.connect("natsched-master")
        jobs = await master.jetstream().key_value(subjects.JOBS_BUCKET)
        original = (await jobs.get("sec.echo")).value

        a1 = await secured.connect("agent-a1")
        heartbeat = f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a1"
        target = f"{subjects.kv_subject_prefix(subjects.JOBS_BUCKET)}sec.echo"
        await a1.publish(heartbeat, b"x", reply=target)
        await a1.flush()

        async def restored() -> bool:
            entry = await jobs.get("sec.echo")
            return entry.value == original and (entry.revision or 0) >= 3  # apply, ack, restore

        await eventually(restored, 5, "the master put the definition back")
        answer = await admin.nc.request(subjects.trigger_subject("sec.echo"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: _has(witness, 1), 10, "the job still runs")
        shown = await admin.call(subjects.API_JOBS_GET, {"job": "sec.echo"})
        assert shown["ok"], shown


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _has(path: Path, count: int) -> bool:
    return len(lines(path)) >= count
