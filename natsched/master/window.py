"""How many run requests the master has out to one agent (or pool) at once.

A burst of due jobs (1,000 slave jobs at one second, or 10,000) would otherwise send every
request at once: an agent handles a few hundred at a time (``agent/responder.py``) and the
rest wait unread in its connection while their 5 s dispatch timeout runs, so the tail of a
large burst was withdrawn and recorded ``agent offline`` although the agent was working
through it. With a window per target, a request's timeout starts when it is sent, behind at
most ``size`` others to the same agent, and one slow or frozen agent holds back only its own
runs, not those of the other agents.
"""

from __future__ import annotations

import asyncio

# As many as an agent handles at once (agent/responder.py MAX_HANDLING): more in flight would
# only wait unread at the agent with their timeout running.
REQUESTS_PER_TARGET = 256


class _Window:
    __slots__ = ("semaphore", "users")

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0  # requests holding or waiting for a place


class RequestWindows:
    """``enter(subject)`` before a request to that subject, ``leave(subject)`` once it is answered
    (or given up): plain calls, not a context manager, as they are on every dispatch's path."""

    def __init__(self, size: int = REQUESTS_PER_TARGET) -> None:
        self.size = size
        self._windows: dict[str, _Window] = {}  # only targets with requests out: bounded by them

    async def enter(self, subject: str) -> None:
        window = self._windows.get(subject)
        if window is None:
            window = self._windows[subject] = _Window(self.size)
        window.users += 1
        try:
            await window.semaphore.acquire()
        except BaseException:  # cancelled while waiting: it holds no place
            self._gone(subject, window)
            raise

    def leave(self, subject: str) -> None:
        window = self._windows[subject]
        window.semaphore.release()
        self._gone(subject, window)

    def _gone(self, subject: str, window: _Window) -> None:
        window.users -= 1
        if not window.users:
            del self._windows[subject]

    def waiting(self, subject: str) -> int:
        """Requests to ``subject`` sent or waiting to be (0 when none)."""
        window = self._windows.get(subject)
        return 0 if window is None else window.users
