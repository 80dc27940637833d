"""Sync reports pushed to notification targets (the seed's "replication results by e-mail").

The agent's config names the targets (``sync_notify``: webhooks, e-mail addresses, NATS
subjects, as ``natsched/senders.py`` sends them) and what they hear (``sync_notify_on``):
``full``, each full resync's report entry (what ``natsched sync-report`` shows), and
``failure``, the first failure of the job sync after it was last in sync (NATS gone, the
bucket unreadable): one message per outage, not one a second. The body is JSON:
``{"agent": ..., "kind": "full resync" | "failure", ...}``.

:class:`SyncNotifier` takes reports without waiting (the sync never waits on a webhook)
into a bounded queue and sends them from its own task, which the agent service owns.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client

from natsched.models import Notify
from natsched.senders import Message, SmtpSettings, Tally, deliver

log = logging.getLogger(__name__)
QUEUE = 100  # reports waiting to be sent; older ones are dropped beyond this
KINDS = {"full resync": "full", "failure": "failure"}


class SyncNotifier:
    def __init__(
        self,
        agent: str,
        targets: tuple[Notify, ...],
        on: frozenset[str],
        smtp: SmtpSettings,
        nc: Callable[[], Client | None],
    ) -> None:
        self._agent = agent
        self._targets = targets
        self._on = on
        self._smtp = smtp
        self._nc = nc  # the agent's connection once it has one (reports may come before)
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self.tally = Tally()

    def report(self, entry: dict[str, Any]) -> None:
        """A sync report entry (or a failure): queued if the config wants it told."""
        if not self._targets or KINDS.get(str(entry.get("kind"))) not in self._on:
            return
        if self._queue.full():
            self._queue.get_nowait()  # the newest reports matter most
            log.warning("sync report notifications fall behind; dropped the oldest")
        self._queue.put_nowait(entry)

    async def run(self) -> None:
        while True:
            entry = await self._queue.get()
            kind = str(entry["kind"])
            title = f"natsched: agent {self._agent} {kind}"
            if kind == "failure":
                title += f": {entry.get('error', '')}"
            else:
                title += f" at revision {entry.get('revision')}"
            message = Message(
                body=json.dumps({"agent": self._agent, **entry}).encode(),
                title=title[:200],
                about=f"sync report ({kind})",
            )
            await asyncio.gather(
                *(deliver(self._nc(), self._smtp, target, message, self.tally) for target in self._targets)
            )
