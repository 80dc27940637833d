"""A flood of bad requests writes a few log lines, not one per message: refused triggers, lock
requests that do not decode, requests asking for their answer on a foreign subject."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.client import Client

from natsched import connection, subjects
from natsched.master import external, locks
from natsched.master.service import MasterService
from natsched.quietlog import Throttled
from tests.conftest import eventually

FLOOD = 2000


@pytest.mark.parametrize(
    ("subject", "reply"),
    [
        (subjects.trigger_subject("g.nojob"), ""),  # not JSON: refused
        (subjects.lock_subject("a1"), ""),  # not msgpack: refused
        (subjects.trigger_subject("g.nojob"), "natsched.event.x"),  # answer wanted elsewhere
    ],
)
async def test_a_flood_of_bad_requests_is_a_few_log_lines(
    master: MasterService,
    nc: Client,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    subject: str,
    reply: str,
) -> None:
    for module in (external, locks, connection):  # no period left over from an earlier test
        monkeypatch.setattr(module, "quiet", Throttled(module.log))
    caplog.set_level(logging.INFO)

    def lines() -> list[logging.LogRecord]:
        # natsched.connection: the refusal of a reply subject that is no inbox is logged there
        return [r for r in caplog.records if r.name.startswith(("natsched.master", "natsched.connection"))]

    async def some_logged() -> bool:
        return bool(lines())

    for _ in range(FLOOD):
        await nc.publish(subject, b"garbage", reply=reply)
    await nc.flush()
    await eventually(some_logged, 10, "the first refusal logged")
    await asyncio.sleep(0.5)  # the rest of the flood handled meanwhile
    logged = lines()
    assert len(logged) <= 3, [r.getMessage() for r in logged[:5]]
