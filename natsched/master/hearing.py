"""Whether this master can hear the server, for judging an agent's silence (lost.py).

A frozen nats-server (SIGSTOP, a paused VM) keeps its connections: nats-py sees no
disconnect, yet nothing arrives, heartbeats included. When it woke, the master's questions
asked meanwhile were answered at once, before the heartbeats the agents wrote meanwhile had
landed: judged on that silence, a healthy agent's running job was recorded lost (bench.chaos
seed 5551212), and a ``redispatch_lost`` job's run was started a second time elsewhere
(tests/faults/test_false_lost.py). So a master times a PING/PONG with the server every
``INTERVAL``, leader or not (a standby may lead when the server wakes): while one waits for
its PONG longer than a third of the unresponsive period the master hears nothing, and once
the PONG comes the agents' silence is counted from then, as after a reconnect.

A PING is never abandoned on the connection it was sent on: nats-py sets the result of the
oldest waiting PONG future when a PONG arrives, and one cancelled by a flush timeout makes
its read loop stop with InvalidStateError. A PING is given up only when the connection it
was sent on is gone (a reconnect drops nats-py's waiting PONGs with the old connection).
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client

log = logging.getLogger(__name__)
INTERVAL = 0.5
# nats-py's own PINGs find a dead connection within 30 s and reconnect (connection.py):
# a PING of ours that waits longer than this went with that connection.
ABANDONED_AFTER = 600
# Deaf once a PING waited a third of the unresponsive period: a shorter freeze plus an agent's
# heartbeat interval (3 s by default, against 10 s) stays within the period, and a slow but
# answering server is not taken for a frozen one at every turn.
DEAF_SHARE = 3.0


class Hearing:
    """When this master could hear the server again (``since``), and whether it can now
    (``hears``): not while disconnected, nor while a PING waits for its PONG too long."""

    def __init__(self, nc: Client, *, unresponsive_after: float) -> None:
        self._nc = nc
        self._deaf_after = unresponsive_after / DEAF_SHARE
        self.since = time.monotonic()  # silence before this is not the agents' fault
        self._asked_at: float | None = None  # when the PING waiting for its PONG was sent
        self._reconnects = nc.stats["reconnects"]
        self._deaf = False  # not hearing at the last hears()

    def hears(self) -> bool:
        """False while disconnected or while a PING has waited for its PONG longer than
        ``deaf_after``; after a reconnect (or that PING's late answer, see ``_ask``), the
        agents' silence counts from then (``since``)."""
        reconnects = self._nc.stats["reconnects"]
        if not self._nc.is_connected or self._ping_overdue():
            self._deaf = True
            return False
        if self._deaf or reconnects != self._reconnects:
            log.info("hearing the server again: agents' silence is counted from now")
            self._deaf, self._reconnects = False, reconnects
            self.since = time.monotonic()
        return True

    def _ping_overdue(self) -> bool:
        asked = self._asked_at
        return asked is not None and time.monotonic() - asked > self._deaf_after

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            if self._nc.is_connected:
                await self._ask()

    async def _ask(self) -> None:
        reconnects = self._nc.stats["reconnects"]
        asked = self._asked_at = time.monotonic()
        ping = asyncio.ensure_future(self._nc.flush(timeout=ABANDONED_AFTER))
        ping.add_done_callback(_settled)
        try:
            while not ping.done() and self._nc.stats["reconnects"] == reconnects:
                await asyncio.wait({ping}, timeout=INTERVAL)
        finally:
            self._asked_at = None
        if not ping.done() or ping.cancelled() or ping.exception() is not None:
            return  # the connection went: the reconnect itself restarts the count (lost.py)
        answered = time.monotonic()
        if answered - asked > self._deaf_after:
            self.since = answered
            log.warning(
                "nats-server answered after %.1fs: agents' silence is counted from now", answered - asked
            )


def _settled(ping: asyncio.Future[None]) -> None:
    """Retrieve an abandoned PING's outcome, so that asyncio does not report it."""
    if not ping.cancelled():
        ping.exception()
