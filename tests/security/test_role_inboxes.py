"""Attack: reading other people's replies. Every role reads replies on its own inbox only."""

from __future__ import annotations

import asyncio
import json

from nats.aio.msg import Msg

from natsched import subjects
from natsched.client import AdminClient
from tests.helpers import job, toml_jobs
from tests.security.hostile import Secured, violations


async def test_agents_and_triggers_cannot_read_replies_meant_for_others(secured: Secured) -> None:
    async with secured.services("a1", "a2"):
        spies: list[tuple[str, list[Msg]]] = []
        refused: list[tuple[str, list[str], str]] = []
        # Every inbox an agent or the trigger user might listen on, except its own.
        for user, inbox in [
            ("agent-a1", "_INBOX"),
            ("agent-a1", subjects.ADMIN_INBOX),
            ("agent-a1", subjects.MASTER_INBOX),
            ("agent-a1", subjects.agent_inbox("a2")),
            ("agent-a1", subjects.TRIGGER_INBOX),
            ("natsched-trigger", "_INBOX"),
            ("natsched-trigger", subjects.ADMIN_INBOX),
            ("natsched-trigger", subjects.agent_inbox("a1")),
        ]:
            errors: list[str] = []
            nc = await secured.connect(user, errors=errors)
            seen: list[Msg] = []

            async def spy(msg: Msg, seen: list[Msg] = seen) -> None:
                seen.append(msg)

            await nc.subscribe(f"{inbox}.>", cb=spy)
            spies.append((f"{user} on {inbox}", seen))
            refused.append((user, errors, f"{inbox}.>"))

        # Replies flow to the admin, the trigger user and the agents (JetStream API, dispatch).
        async with AdminClient(secured.settings("natsched-admin")) as admin:
            reply = await admin.call(
                subjects.API_APPLY,
                {
                    "source": "sec.toml",
                    "content": toml_jobs(
                        job("echo", mode="slave", targets={"agents": ["a1", "a2"]}, command=["echo", "x"]),
                        group="sec",
                    ),
                },
            )
            assert reply["ok"], reply
            assert (await admin.call(subjects.API_JOBS_LIST, {}))["ok"]
        bot = await secured.connect("natsched-trigger")
        answer = await bot.request(subjects.trigger_subject("sec.echo"), b"{}", timeout=10)
        assert json.loads(answer.data)["ok"], answer.data  # its own inbox works
        await asyncio.sleep(1.0)

        assert [(who, len(seen)) for who, seen in spies if seen] == []
        for user, errors, subject in refused:
            assert violations(errors, subject), (user, subject, errors)


async def test_nobody_but_a_master_can_push_to_the_masters_shared_consumers(secured: Secured) -> None:
    """The shared consumers deliver to fixed subjects under the masters' inbox: a forged
    "completion" (a chain start, a retry) sent there by another role is refused."""
    async with secured.services("a1"):
        for user in ("agent-a1", "natsched-trigger", "natsched-admin"):
            errors: list[str] = []
            nc = await secured.connect(user, errors=errors)
            for durable in (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE):
                await nc.publish(subjects.master_deliver_subject(durable), b'{"state": "succeeded"}')
            await nc.flush()
            await asyncio.sleep(0.3)
            for durable in (subjects.CHAINS_DURABLE, subjects.RETRIES_DURABLE, subjects.NOTIFY_DURABLE):
                assert violations(errors, subjects.master_deliver_subject(durable)), (user, errors)
