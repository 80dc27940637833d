"""Requests handled side by side: each message in its own task, a bounded number at once.

The API, the trigger subject and lock requests each subscribe with this: one slow request (a
cancel waiting on an agent that does not answer, a dispatch to a frozen agent) holds back no
other, and the subscription itself waits (back-pressure) when every slot is taken.

A request whose reply subject is no requester's inbox is dropped before anything else: the
master would answer it with its own permissions (see ``subjects.is_reply_inbox``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg

from natsched import subjects
from natsched.quietlog import Throttled

log = logging.getLogger(__name__)
quiet = Throttled(log)  # anyone may send such requests: a flood of them is not a line each

CLOSE_WAIT = 2.0  # bounded: a task inside nats-py may swallow its cancellation


def foreign_reply(msg: Msg) -> bool:
    """True (and one warning) if ``msg`` asks for its answer anywhere but a reply inbox."""
    if not msg.reply or subjects.is_reply_inbox(msg.reply):
        return False
    quiet.log(
        logging.WARNING,
        "foreign reply",
        "request on %s dropped: its reply subject %s is no reply inbox (_INBOX.… or _INBOX_<role>.…)",
        subjects.shown(msg.subject),
        subjects.shown(msg.reply),
    )
    return True


class SideBySide:
    def __init__(self, handle: Callable[[Msg], Awaitable[None]], limit: int) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def take(self, msg: Msg) -> None:
        """The subscription's callback (nats-py wants a coroutine function, not a callable)."""
        if self._closed:
            return  # stopping: what is still queued (a flood's backlog) gets no answer
        if foreign_reply(msg):
            return  # nothing runs, nothing is written, nobody is answered
        await self._slots.acquire()  # back-pressure: the subscription waits when all are busy
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except nats.errors.ConnectionClosedError:
            # The answer could not go out: the connection was closed for good (the service is
            # stopping or exits on it). No traceback for that; the requester asks again.
            log.debug("no answer to %s: the connection is closed", subjects.shown(msg.subject))
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Take nothing more; cancel what is in hand; shutdown waits at most ``CLOSE_WAIT`` for it."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)
