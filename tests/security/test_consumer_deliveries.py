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
import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from natsched import subjects
from natsched.client import AdminClient
from tests.conftest import eventually
from tests.helpers import job, toml_jobs
from tests.security.hostile import Secured
from tests.security.test_forged_completions import webhook

__all__ = ["webhook"]  # the fixture, used here too


async def deliver_to(nc: Client, stream: str, config: dict[str, Any]) -> str:
    """A push consumer on ``stream`` made by ``nc``'s role; its name once it delivered all."""
    body = json.dumps({"stream_name": stream, "config": {"ack_policy": "none", **config}}).encode()
    created = json.loads((await nc.request(f"$JS.API.CONSUMER.CREATE.{stream}", body, timeout=5)).data)
    assert "error" not in created, created
    name = str(created["name"])

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
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "up",
                        mode="slave",
                        targets={"agents": ["a1"]},
                        command=["false"],
                        notify=[{"webhook": url}],
                    ),
                    group="sec",
                ),
            },
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
