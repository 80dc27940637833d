"""What the flood tests share: a flood of junk on a subject, and the peak memory of the process
that takes it."""

from __future__ import annotations

import asyncio
import contextlib
import time

import nats
import psutil


async def flood(url: str, subject: str, seconds: float) -> int:
    """Publish junk requests on ``subject`` for ``seconds``, as fast as one client can: how many."""
    flooder = await nats.connect(url, pending_size=64 * 1024 * 1024)
    sent = 0
    try:
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            for _ in range(1000):
                # Not JSON: refused at once, each refusal a log line before.
                await flooder.publish(subject, b"x" * 100, reply="_INBOX.flood.x")
            sent += 1000
            await asyncio.sleep(0)
        await flooder.flush(timeout=30)
    finally:
        await flooder.close()
    return sent


class PeakRss:
    """``async with PeakRss(pid) as memory``: how far the process's resident memory rose above
    its size at the start (``memory.growth``), sampled every 0.1 s while the block runs."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.before = self._process.memory_info().rss
        self.peak = self.before
        self._watcher: asyncio.Task[None] | None = None

    @property
    def growth(self) -> int:
        return self.peak - self.before

    async def __aenter__(self) -> PeakRss:
        self._watcher = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._watcher is not None
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher

    async def _watch(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.1)
