"""Attack: an agent has nats-server overwrite a value only masters write (a job's definition, a
pause, a secret), so the job never runs again (or runs although paused).

Agents may not write ``natsched_jobs``. But nats-server sends the acknowledgement of a
JetStream publish to whatever reply subject the publisher gave, unchecked against its
permissions: agent a1 writes its own heartbeat with the reply subject
``$KV.natsched_jobs.sec.echo``, and the acknowledgement (``{"stream": …, "seq": …}``) becomes
the job's stored value. Every master and agent then saw an invalid definition: the job ran
nowhere until an admin applied it again, also after restarts. Masters now put back what a value
no master writes (not a msgpack map; for a secret, a value that does not authenticate under its
name) replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

from nats.js.kv import KeyValue

from natsched import subjects
from natsched.calendars import PAUSE_JOB_PREFIX
from natsched.client import AdminClient
from natsched.master.service import MasterService
from natsched.secrets import generate_key_file, load_key
from tests.conftest import eventually
from tests.helpers import has_lines, job, toml_jobs
from tests.security.hostile import Secured


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
        await eventually(lambda: has_lines(witness, 1), 10, "the job still runs")
        shown = await admin.call(subjects.API_JOBS_GET, {"job": "sec.echo"})
        assert shown["ok"], shown


async def test_an_agent_cannot_wipe_a_pause_or_a_secret_through_a_jetstream_acknowledgement(
    secured: Secured, tmp_path: Path
) -> None:
    """The same for the settings bucket (a pause an operator set: lost at the next start of a
    master or agent, so the job ran again) and the secrets bucket (every run needing the secret
    failed at once)."""
    key_file = tmp_path / "secret.key"
    generate_key_file(key_file)
    master_service = MasterService(secured.settings("natsched-master"), secret_key=load_key(key_file))
    async with master_service, AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(job("echo", mode="slave", targets={"agents": ["a1"]}), group="sec"),
            },
        )
        assert reply["ok"], reply
        assert (await admin.call(subjects.API_PAUSE, {"job": "sec.echo", "note": "maintenance"}))["ok"]
        assert (await admin.call(subjects.API_SECRETS_SET, {"name": "db_pass", "value": "hunter2"}))["ok"]
        master = (await secured.connect("natsched-master")).jetstream()
        settings = await master.key_value(subjects.SETTINGS_BUCKET)
        secrets = await master.key_value(subjects.SECRETS_BUCKET)
        pause_key = f"{PAUSE_JOB_PREFIX}sec.echo"
        pause, secret = (await settings.get(pause_key)).value, (await secrets.get("db_pass")).value

        a1 = await secured.connect("agent-a1")
        heartbeat = f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a1"
        await a1.publish(
            heartbeat, b"x", reply=f"{subjects.kv_subject_prefix(subjects.SETTINGS_BUCKET)}{pause_key}"
        )
        await a1.publish(
            heartbeat, b"x", reply=f"{subjects.kv_subject_prefix(subjects.SECRETS_BUCKET)}db_pass"
        )
        await a1.flush()

        await eventually(lambda: _back(settings, pause_key, pause), 5, "the pause was put back")
        await eventually(lambda: _back(secrets, "db_pass", secret), 5, "the secret was put back")


async def _back(kv: KeyValue, key: str, value: bytes | None) -> bool:
    return (await kv.get(key)).value == value
