"""Attack: a request whose reply subject is not an inbox turns the master into a confused deputy.

The master answers triggers, API requests, lock requests and status requests on the reply
subject the requester chose, with the master's own permissions (every ``$KV`` key, the
JetStream API, ``natsched.>``) and, through ``allow_responses``, any subject at all. A trigger
caller, the read-only web login or an agent could so have the master write into a job's KV key
(the job vanishes from every agent), delete a key (the API's reply copies the request's
headers, ``KV-Operation: DEL`` included), or publish on a subject trigger's subject and start
a job it is not entitled to. The master answers only on reply inboxes (``_INBOX.…`` or
``_INBOX_<role>.…``, never the masters' own); any other request is dropped in one warning
line and nothing runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from nats.js.errors import KeyNotFoundError

from natsched import subjects
from natsched.client import AdminClient
from natsched.errors import ConfigError
from natsched.settings import ConnectionSettings
from tests.conftest import eventually
from tests.helpers import file_lines, has_lines, job, toml_jobs
from tests.security.hostile import Secured


async def test_no_role_can_aim_the_masters_replies_at_a_bucket_or_a_subject_trigger(
    secured: Secured, tmp_path: Path
) -> None:
    echoed, deployed = tmp_path / "echo.txt", tmp_path / "deploy.txt"

    def append(witness: Path) -> list[str]:
        return ["sh", "-c", f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness}']

    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job("echo", mode="slave", targets={"agents": ["a1"]}, command=append(echoed)),
                    # Started by anyone who may publish ops.deploy.*: no role here may.
                    job(
                        "deploy",
                        mode="slave",
                        targets={"agents": ["a1"]},
                        command=append(deployed),
                        triggers=[{"subject": "ops.deploy.>"}],
                    ),
                    job("keep", mode="slave", targets={"agents": ["a1"]}),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        master = await secured.connect("natsched-master")
        js = master.jetstream()
        jobs = await js.key_value(subjects.JOBS_BUCKET)

        async def kept() -> bool:
            return "ops.deploy.>" in ((await js.stream_info(subjects.SUBJECTS_STREAM)).config.subjects or [])

        await eventually(kept, what="the subject trigger's stream keeps ops.deploy")
        before = (await jobs.get("sec.echo")).value
        status_key = "sec.keep"

        bot = await secured.connect("natsched-trigger")
        trigger = subjects.trigger_subject("sec.echo")
        web = await secured.connect("natsched-web")
        a1 = await secured.connect("agent-a1")
        # 1. A job the caller may not start: the trigger user, the read-only web role and an
        # agent aim the master's answer at ops.deploy.*, the subjects sec.deploy starts on.
        await bot.publish(trigger, b"{}", reply="ops.deploy.trigger")
        await web.publish(subjects.MASTERS_STATUS, b"{}", reply="ops.deploy.status")
        await web.publish(subjects.API_PING, b"{}", reply="ops.deploy.ping")
        await a1.publish(subjects.lock_subject("a1"), b"\x80", reply="ops.deploy.lock")
        for nc in (bot, web, a1):
            await nc.flush()
        # Without the check these start three runs within a second or two: wait past that.
        await asyncio.sleep(3.0)
        assert file_lines(deployed) == [], "a reply started a job through its subject trigger"

        # 2. Writing and deleting keys: the trigger user aims the answer at a job's key, the
        # masters' own consumer subject, an agent's run subject; the web role asks with
        # KV-Operation: DEL (an API reply copies the request's headers).
        for target in (
            "$KV.natsched_jobs.sec.echo",
            subjects.master_deliver_subject(subjects.CHAINS_DURABLE),
            "natsched.agent.a1.run",
        ):
            await bot.publish(trigger, b"{}", reply=target)
        await web.publish(
            subjects.API_PING, b"{}", reply=f"$KV.natsched_jobs.{status_key}", headers={"KV-Operation": "DEL"}
        )
        for nc in (bot, web):
            await nc.flush()
        await asyncio.sleep(1.0)
        assert (await jobs.get("sec.echo")).value == before
        try:
            assert (await jobs.get(status_key)).value
        except KeyNotFoundError:
            pytest.fail("a reply deleted sec.keep's definition")
        assert file_lines(echoed) == [], "a trigger with a foreign reply subject ran"

        # Real inboxes still get their answers, and the master still serves.
        answer = await bot.request(trigger, b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: has_lines(echoed, 1), what="the real trigger ran")
        assert (await admin.call(subjects.API_PING, {}))["ok"]
        plain = await secured.connect("natsched-master", inbox="_INBOX")  # the nats CLI's default
        assert json.loads((await plain.request(subjects.API_PING, b"{}", timeout=5)).data)["ok"]


def test_a_reply_prefix_outside_the_inboxes_is_refused_in_the_settings() -> None:
    with pytest.raises(ConfigError, match="_INBOX"):
        ConnectionSettings(inbox_prefix="myapp")
    assert ConnectionSettings(inbox_prefix="_INBOX_ops").inbox_prefix == "_INBOX_ops"
