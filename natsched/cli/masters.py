"""Asking every master at once: ``natsched.masters.status`` has no queue group, so each answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from nats.aio.msg import Msg

from natsched import subjects
from natsched.connection import connect
from natsched.settings import ConnectionSettings


async def collect_masters(settings: ConnectionSettings, wait: float) -> list[dict[str, Any]]:
    """The answers that arrive within ``wait`` seconds (one per running master)."""
    nc = await connect(settings)
    answers: list[dict[str, Any]] = []
    try:
        inbox = nc.new_inbox()

        async def on_answer(msg: Msg) -> None:
            with contextlib.suppress(ValueError):  # not a master's answer
                answers.append(json.loads(msg.data))

        sub = await nc.subscribe(inbox, cb=on_answer)
        await nc.publish(subjects.MASTERS_STATUS, b"{}", reply=inbox)
        await asyncio.sleep(wait)
        await sub.unsubscribe()
    finally:
        await nc.close()
    return answers
