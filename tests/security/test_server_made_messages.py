"""Attack: having nats-server itself publish on a subject trigger's subject.

nats-server sends the acknowledgement of a JetStream publish, and the answer of a JetStream API
request, to whatever reply subject the client gave, unchecked against that client's
permissions. An agent (which writes its heartbeat into a stream) or the read-only web role
(which may ask for a stream's info) could so put a message on ``ops.deploy.*`` and start
``sec.deploy``, a job neither may start. Those messages have fixed shapes that no publisher
sends: a subject trigger refuses them in one warning line.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from natsched import subjects
from natsched.client import AdminClient
from natsched.master.inbound import refusal
from natsched.triggers.subject import SubjectTrigger
from tests.conftest import eventually
from tests.security.hostile import Secured, apply_subject_triggered_deploy


async def test_an_agent_or_the_web_role_cannot_start_a_subject_triggered_job_through_the_server(
    secured: Secured, tmp_path: Path
) -> None:
    witness = tmp_path / "deploy.txt"
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        js = await apply_subject_triggered_deploy(secured, admin, witness, "ops.deploy.>")

        a1 = await secured.connect("agent-a1")
        web = await secured.connect("natsched-web")
        # a1's own heartbeat write: its acknowledgement goes to ops.deploy.ack.
        await a1.publish(
            f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a1", b"x", reply="ops.deploy.ack"
        )
        # A stream-info request of the web role: the answer goes to ops.deploy.info.
        info = f"$JS.API.STREAM.INFO.{subjects.EVENTS_STREAM}"
        await web.publish(info, b"", reply="ops.deploy.info")
        await a1.flush()
        await web.flush()

        async def stored() -> bool:
            return (await js.stream_info(subjects.SUBJECTS_STREAM)).state.messages >= 2

        await eventually(stored, what="nats-server put both on ops.deploy.*")
        # Without the check both start a run within a second or two: wait past that.
        await asyncio.sleep(3.0)
        assert not witness.exists(), witness.read_text()


def test_only_the_servers_own_shapes_are_refused() -> None:
    trigger = SubjectTrigger(subject="orders.>")
    for made in (
        b'{"stream":"KV_natsched_agents","seq":3}',
        b'{"stream":"KV_natsched_claims","seq":9,"duplicate":true}',
        b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence"},"seq":0}',
        b'{"type":"io.nats.jetstream.api.v1.stream_info_response","config":{}}',
    ):
        assert "nats-server" in refusal(trigger, made), made
    for sent in (
        b'{"stream":"orders","seq":3,"total":5}',
        b'{"error":"disk full"}',
        b'{"type":"order.paid"}',
        b"plain text",
        b"",
    ):
        assert refusal(trigger, sent) == "", sent
