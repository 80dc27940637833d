"""Attack: a push consumer's deliveries, sent where its creator chose.

A role that may read a stream may create consumers on it, and the consumer's
``deliver_subject`` is in the request's body, which subject permissions cannot constrain:
nats-server (measured on the version the tests run) publishes the stream's messages there,
whatever its creator may publish or subscribe to. It sends them only while someone
subscribes to exactly that subject (with ``deliver_group``: in exactly that queue group); a
wildcard subscription or a stream's wildcard subjects wake no consumer, but once one is
awake every subscriber and stream matching the subject gets its messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from natsched import buckets, codec, subjects
from natsched.client import AdminClient
from natsched.events import RunEvent, RunState, new_run_id
from natsched.runmessages import RunRequest
from natsched.vocab import RunTrigger
from tests.conftest import eventually
from tests.helpers import apply, file_lines, has_lines, job, toml_jobs
from tests.security.hostile import Secured, apply_subject_triggered_deploy
from tests.security.test_forged_completions import webhook

__all__ = ["webhook"]  # the fixture, used here too


async def push_consumer(nc: Client, stream: str, config: dict[str, Any]) -> dict[str, Any]:
    """A push consumer on ``stream`` made by ``nc``'s role: the server's answer."""
    body = json.dumps({"stream_name": stream, "config": {"ack_policy": "none", **config}}).encode()
    created: dict[str, Any] = json.loads(
        (await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", body, timeout=5)).data
    )
    assert "error" not in created, created
    return created


async def deliver_to(nc: Client, stream: str, config: dict[str, Any]) -> str:
    """A push consumer on ``stream`` made by ``nc``'s role; its name once it delivered all."""
    name = str((await push_consumer(nc, stream, config))["name"])

    async def delivered() -> bool:
        info = await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{name}", b"", timeout=5)
        return bool(json.loads(info.data)["num_pending"] == 0)

    await eventually(delivered, what=f"consumer {name} delivered all it had")
    return name


async def test_the_web_role_cannot_replay_completions_into_the_masters_shared_consumers(
    secured: Secured, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Every final event of the last 30 days delivered again to the masters' notification
    consumer: each failure notified again (chains and retries are deduplicated, for as long
    as their records last)."""
    url, received = webhook
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await apply(
            admin.nc,
            toml_jobs(
                job(
                    "up",
                    mode="slave",
                    targets={"agents": ["a1"]},
                    command=["false"],
                    notify=[{"webhook": url}],
                ),
                group="sec",
            ),
            source="sec.toml",
        )
        assert reply["ok"], reply
        answer = await admin.nc.request(subjects.trigger_subject("sec.up"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: _got(received), 15, "sec.up's failure was notified")

        web = await secured.connect("natsched-web")
        for durable in (subjects.NOTIFY_DURABLE, subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE):
            await deliver_to(
                web,
                subjects.EVENTS_STREAM,
                {
                    "deliver_subject": subjects.master_deliver_subject(durable),
                    "deliver_group": durable,  # the masters' queue group: the consumer is awake
                    "deliver_policy": "all",
                },
            )
        await asyncio.sleep(1.0)  # a notification leaves within milliseconds of its event
        assert len(received) == 1, received


async def _got(received: list[dict[str, Any]]) -> bool:
    return bool(received)


async def test_what_a_role_makes_a_stream_store_is_no_heartbeat_and_no_event(secured: Secured) -> None:
    """The web role and the admin may subscribe to one exact subject of ``natsched.event.>`` or
    ``$KV.natsched_agents.>``, waking their own consumer that delivers there: the events
    stream or the agents bucket stores what it pushes. nats-server stores it under its
    *original* subject (``natsched.log.…``, ``$KV.natsched_chains.…``), outside what any
    reader of those streams filters on: a delete marker of the chains bucket deletes no
    heartbeat, a job's output that looks like an event is no event. (It still takes room
    in the stream: see the README.) Fails if a version of nats-server stores it under the
    deliver subject."""
    async with secured.services():
        master = await secured.connect("natsched-master")
        js = master.jetstream()
        chains = await js.key_value(subjects.CHAINS_BUCKET)
        await chains.put("fanin.c1.sec.down", b"{}")
        await chains.delete("fanin.c1.sec.down")  # what the masters do once a fan-in ran
        printed = b'{"v":1,"run_id":"1-a","job":"sec.up","agent":"a2","state":"succeeded"}'
        output = subjects.log_subject("a1", "1-a")
        await js.publish(output, printed)  # a job's output
        marker = f"{subjects.kv_subject_prefix(subjects.CHAINS_BUCKET)}fanin.c1.sec.down"
        heartbeat = f"{subjects.kv_subject_prefix(subjects.AGENTS_BUCKET)}a2"
        event = "natsched.event.a2.sec.up.succeeded"
        agents, events = subjects.kv_stream(subjects.AGENTS_BUCKET), subjects.EVENTS_STREAM
        for user in ("natsched-web", "natsched-admin"):
            nc = await secured.connect(user)
            for target, stream, source in (
                (heartbeat, subjects.kv_stream(subjects.CHAINS_BUCKET), marker),
                (event, subjects.LOGS_STREAM, output),
            ):
                await nc.subscribe(target)  # the exact subject: the consumer wakes up
                await nc.flush()
                await deliver_to(
                    nc, stream, {"deliver_subject": target, "deliver_policy": "all", "filter_subject": source}
                )
        for stream, source, data in ((agents, marker, b""), (events, output, printed)):

            async def stored(stream: str = stream, source: str = source) -> bool:
                try:
                    await js.get_last_msg(stream, source)
                except NotFoundError:
                    return False
                return True

            await eventually(stored, what=f"{stream} stored the delivery of {source}")
            assert (await js.get_last_msg(stream, source)).data in (data, None)
        for stream, target in ((agents, heartbeat), (events, event)):
            with pytest.raises(NotFoundError):
                made = await js.get_last_msg(stream, target)
                pytest.fail(f"{target}: {made.headers} {made.data!r}")


async def test_nothing_wakes_a_consumer_delivering_into_a_bucket_a_trigger_or_the_api(
    secured: Secured,
) -> None:
    """Nobody subscribes to one exact key subject of the jobs, settings, claims or state
    bucket (their streams listen on wildcards), nor to one trigger, API or lock subject: a
    consumer an agent, the admin or the web role points there stays asleep, and no definition
    is written back, no claim or lease forged, no job started.
    Fails if something of natsched's starts subscribing there (or the server stops needing
    an exact subscriber)."""
    async with secured.services():
        master = await secured.connect("natsched-master")
        js = master.jetstream()
        jobs = await js.key_value(subjects.JOBS_BUCKET)
        await jobs.put("sec.x", b"old")
        await jobs.put("sec.x", b"new")
        await jobs.delete("sec.gone")
        settings = await js.key_value(subjects.SETTINGS_BUCKET)
        await settings.put("pause.sec.x", b"{}")
        await js.publish("natsched.event.a1.sec.x.succeeded", b"{}")
        kv = subjects.kv_subject_prefix
        jobs_stream = subjects.kv_stream(subjects.JOBS_BUCKET)
        attacks = (
            ("agent-a1", subjects.kv_stream(subjects.SETTINGS_BUCKET), f"{kv(subjects.JOBS_BUCKET)}sec.x"),
            ("agent-a1", jobs_stream, f"{kv(subjects.CLAIMS_BUCKET)}agent.a2.r1"),
            ("agent-a1", jobs_stream, f"{kv(subjects.SETTINGS_BUCKET)}pause.a2"),
            ("natsched-admin", jobs_stream, f"{kv(subjects.STATE_BUCKET)}leader"),
            ("natsched-web", subjects.EVENTS_STREAM, f"{kv(subjects.JOBS_BUCKET)}sec.x"),
            ("natsched-web", subjects.LOGS_STREAM, f"{kv(subjects.CLAIMS_BUCKET)}member.p.a3"),
            # The masters listen on wildcards here too (and drop requests without a reply inbox).
            ("agent-a1", jobs_stream, subjects.trigger_subject("sec.x")),
            ("natsched-web", subjects.EVENTS_STREAM, subjects.API_JOBS_DELETE),
            ("natsched-web", subjects.EVENTS_STREAM, subjects.lock_subject("a2")),
        )
        buckets = (
            subjects.JOBS_BUCKET,
            subjects.SETTINGS_BUCKET,
            subjects.CLAIMS_BUCKET,
            subjects.STATE_BUCKET,
        )
        before = {b: (await js.stream_info(subjects.kv_stream(b))).state.last_seq for b in buckets}
        for user, stream, target in attacks:
            nc = await secured.connect(user)
            created = await push_consumer(nc, stream, {"deliver_subject": target, "deliver_policy": "all"})
            assert not created.get("push_bound"), (user, target)  # asleep: nobody listens there
        await asyncio.sleep(0.5)  # what a consumer delivers arrives within milliseconds
        for bucket, last in before.items():
            assert (await js.stream_info(subjects.kv_stream(bucket))).state.last_seq == last, bucket
        assert (await jobs.get("sec.x")).value == b"new"


async def test_an_agent_or_the_web_role_cannot_start_a_subject_triggered_job_through_a_consumer(
    secured: Secured, tmp_path: Path
) -> None:
    """A subject trigger on an exact subject wakes any consumer delivering there (the
    subject-trigger stream listens on exactly it): an agent (the jobs bucket) or the web role
    (the events stream) makes the stream store messages. Stored under their original subjects
    (``$KV.natsched_jobs.…``, ``natsched.event.…``, which no subject trigger may listen on),
    they start nothing. Fails if a version of nats-server stores them under the deliver
    subject."""
    witness = tmp_path / "deploy.txt"
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        js = await apply_subject_triggered_deploy(secured, admin, witness, "ops.deploy")
        answer = await admin.nc.request(subjects.trigger_subject("sec.deploy"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data  # an event in the events stream
        await eventually(lambda: has_lines(witness, 1), 15, "sec.deploy ran once, triggered by hand")

        a1 = await secured.connect("agent-a1")
        web = await secured.connect("natsched-web")
        await deliver_to(a1, subjects.kv_stream(subjects.JOBS_BUCKET), {"deliver_subject": "ops.deploy"})
        await deliver_to(web, subjects.EVENTS_STREAM, {"deliver_subject": "ops.deploy"})

        async def stored() -> bool:
            return (await js.stream_info(subjects.SUBJECTS_STREAM)).state.messages >= 2

        await eventually(stored, what="nats-server put the deliveries in the subject-trigger stream")

        async def handled() -> bool:
            info = await js.consumer_info(subjects.SUBJECTS_STREAM, subjects.SUBJECT_TRIGGER_QUEUE)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(handled, what="the masters handled what the stream stored")
        await asyncio.sleep(1.5)  # a run a message started would have written by now
        assert len(file_lines(witness)) == 1, file_lines(witness)


async def test_no_consumer_delivers_a_run_request_to_an_agent(secured: Secured, tmp_path: Path) -> None:
    """An agent subscribes to exactly its run, cancel and sync subjects: any consumer delivering
    there is awake, and the agent took what came as a master's request. Agent a1 writes a run
    request of its own making where it may (its events), the read-only web role delivers it
    to a2's run subject: a2 ran a1's command. A master's request has the master's reply inbox;
    a delivery has a JetStream ack subject, and is dropped."""
    witness = tmp_path / "runs.txt"
    async with secured.services("a1", "a2"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await apply(
            admin.nc,
            toml_jobs(
                job(
                    "on2",
                    mode="slave",
                    targets={"agents": ["a2"]},
                    command=["sh", "-c", f'echo "$NATSCHED_RUN_ID" >> {witness}'],
                ),
                group="sec",
            ),
            source="sec.toml",
        )
        assert reply["ok"], reply
        a1 = await secured.connect("agent-a1")
        js = a1.jetstream()
        master = (await secured.connect("natsched-master")).jetstream()
        entry = await (await master.key_value(subjects.JOBS_BUCKET)).get("sec.on2")  # a1 has it too
        on2 = codec.decode_job(entry.value or b"", "sec.on2")
        lease = await js.get_last_msg(
            subjects.kv_stream(subjects.STATE_BUCKET),
            subjects.kv_subject_prefix(subjects.STATE_BUCKET) + subjects.LEASE_KEY,
        )
        forged = RunRequest(
            run_id=new_run_id(),
            spec=dataclasses.replace(on2, command=("sh", "-c", f"echo forged >> {witness}")),
            trigger=RunTrigger.MANUAL,
            term=int(codec.unpack(lease.data or b"", "lease")["term"]),
        )
        forged_event = "natsched.event.a1.sec.on2.started"
        await js.publish(forged_event, forged.encode())  # a1's own event subject

        web = await secured.connect("natsched-web")
        await deliver_to(
            web,
            subjects.EVENTS_STREAM,
            {
                "deliver_subject": subjects.agent_run_subject("a2"),
                "deliver_policy": "all",
                "filter_subject": forged_event,
            },
        )
        await asyncio.sleep(1.5)  # a2 starts a run it takes within milliseconds
        assert not witness.exists(), file_lines(witness)

        # A master's dispatch still runs.
        answer = await admin.nc.request(subjects.trigger_subject("sec.on2"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data
        await eventually(lambda: has_lines(witness, 1), 15, "sec.on2 ran, dispatched by a master")
        assert "forged" not in file_lines(witness), file_lines(witness)


async def test_a_consumer_the_web_role_made_under_a_masters_name_is_made_again(
    secured: Secured, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    """Before the first master starts, the web role creates ``natsched-notify`` on the events
    stream through the create subject without a name (``$JS.API.CONSUMER.CREATE.<stream>``,
    which ordered consumers need, so permissions cannot deny it), with the name in the body:
    an ephemeral consumer, no acks, no queue group. No master could start (``cannot create a
    queue subscription for a consumer without a deliver group``). A master now makes such a
    consumer again as its own, which keeps its position while no master runs: a failure
    published then is notified when one is back."""
    url, received = webhook
    master = await secured.connect("natsched-master")
    await buckets.ensure_all(master.jetstream())
    web = await secured.connect("natsched-web")
    await push_consumer(
        web,
        subjects.EVENTS_STREAM,
        {
            "name": subjects.NOTIFY_DURABLE,
            "deliver_subject": f"{subjects.WEB_INBOX}.stolen",
            "inactive_threshold": 1_000_000_000,
        },
    )
    definition = toml_jobs(
        job("up", mode="slave", targets={"agents": ["a1"]}, command=["false"], notify=[{"webhook": url}]),
        group="sec",
    )
    async with secured.services("a1"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(subjects.API_APPLY, {"source": "sec.toml", "content": definition})
        assert reply["ok"], reply
    js = master.jetstream()
    await asyncio.sleep(1.5)  # past the consumer's inactive threshold, had it kept it
    # a1 publishes a failure of a run of its own while no master runs.
    event = RunEvent(
        run_id=new_run_id(), job="sec.up", agent="a1", state=RunState.FAILED, trigger=RunTrigger.MANUAL
    )
    a1 = await secured.connect("agent-a1")
    await a1.jetstream().publish(event.subject, event.to_json())
    async with secured.services("a1"):
        await eventually(lambda: _got(received), 15, "the failure published while no master ran was notified")
    info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.NOTIFY_DURABLE)
    assert info.config.durable_name == subjects.NOTIFY_DURABLE


async def test_no_consumer_delivers_a_cancel_to_an_agent(secured: Secured, tmp_path: Path) -> None:
    """As with run requests: a1 writes ``{"run_id": …}`` (a cancel) into its own events, the web
    role delivers it to ``natsched.agent.a2.cancel``, and a2 killed a run of a job neither may
    cancel."""
    witness = tmp_path / "ended.txt"
    async with secured.services("a1", "a2"), AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await apply(
            admin.nc,
            toml_jobs(
                job(
                    "slow",
                    mode="slave",
                    targets={"agents": ["a2"]},
                    command=["sh", "-c", f"sleep 2; echo done >> {witness}"],
                ),
                group="sec",
            ),
            source="sec.toml",
        )
        assert reply["ok"], reply
        answer = json.loads(
            (await admin.nc.request(subjects.trigger_subject("sec.slow"), b"{}", timeout=10)).data
        )
        assert answer["ok"], answer
        cancel = "natsched.event.a1.sec.slow.started"
        a1 = await secured.connect("agent-a1")
        await a1.jetstream().publish(cancel, codec.pack({"run_id": answer["runs"][0]["run_id"]}))
        web = await secured.connect("natsched-web")
        await deliver_to(
            web,
            subjects.EVENTS_STREAM,
            {
                "deliver_subject": subjects.agent_cancel_subject("a2"),
                "deliver_policy": "all",
                "filter_subject": cancel,
            },
        )
        await eventually(lambda: has_lines(witness, 1), 15, "sec.slow ran to its end on a2")
