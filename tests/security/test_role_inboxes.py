"""Attack: reading other people's replies. Every role reads replies on its own inbox only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from natsched import subjects
from natsched.client import AdminClient
from tests.helpers import job, toml_jobs
from tests.security.hostile import Secured, secured_server, violations


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    async with secured_server(tmp_path) as server:
        yield server


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
