"""Requests handled side by side: each message in its own task, a bounded number at once.

The API, the trigger subject and lock requests each subscribe with this: one slow request (a
cancel waiting on an agent that does not answer, a dispatch to a frozen agent) holds back no
other, and the subscription itself waits (back-pressure) when every slot is taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

CLOSE_WAIT = 2.0  # bounded: a task inside nats-py may swallow its cancellation


class SideBySide:
    def __init__(self, handle: Callable[[Msg], Awaitable[None]], limit: int) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self, msg: Msg) -> None:
        """The subscription's callback (nats-py wants a coroutine function, not a callable)."""
        await self._slots.acquire()  # back-pressure: the subscription waits when all are busy
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Cancel what is in hand; shutdown waits at most ``CLOSE_WAIT`` for it."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=CLOSE_WAIT)
