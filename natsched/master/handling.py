"""Requests handled side by side: each message in its own task, a bounded number at once.

The API, the trigger subject and lock requests each subscribe with this: one slow request (a
cancel waiting on an agent that does not answer, a dispatch to a frozen agent) holds back no
other, and the subscription itself waits (back-pressure) when every slot is taken.

A request whose reply subject is no requester's inbox is dropped before anything else: the
master would answer it with its own permissions (``connection.dropped_for_its_reply``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg

from natsched import subjects
from natsched.connection import dropped_for_its_reply

log = logging.getLogger(__name__)

CLOSE_WAIT = 2.0  # bounded: a task inside nats-py may swallow its cancellation


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
        if dropped_for_its_reply(msg):
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
