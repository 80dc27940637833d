"""One run's output on its way to ``natsched.log.<agent>.<run_id>``: secrets masked, size capped.

Masking: the runner hands over output in the pieces the process wrote (coalesced up to
64 KiB); a secret written in two pieces is masked all the same because
:class:`StreamMasker` holds back the end of a piece that could begin one.

Cap: a job printing 200 MB must not fill ``NATSCHED_LOGS`` (shared by every run, bounded
by size: one such run pushes out everybody else's output). The first ``limit`` bytes are
published as they come; after that only the last ``limit // 4`` bytes are kept, and when
the run ends a marker line saying how much was cut is published, then that tail. So a run
stores at most 1.25 × ``limit`` and keeps both its start and its end (where the error
usually is). The event's own 4 KiB output tail is unaffected.

``close`` (after the process ended and its output was read) publishes what is held.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from natsched import subjects
from natsched.secrets import Masker, StreamMasker

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
CHUNK = 64 * 1024  # what one log message carries at most (well under NATS's max_payload)


class RunOutput:
    def __init__(self, run_id: str, publish: Publish, masker: Masker, limit: int) -> None:
        self._run_id = run_id
        self._publish = publish
        self._masked = StreamMasker(masker)
        self._head_left = limit
        self._tail_limit = limit // 4
        self._tail: deque[bytes] = deque()
        self._tail_bytes = 0
        self._cut = 0

    async def write(self, chunk: bytes) -> None:
        await self._pass(self._masked.feed(chunk))

    async def close(self) -> None:
        await self._pass(self._masked.flush())
        if self._cut:
            note = f"\n[natsched: {self._cut} bytes of output cut here (output_limit); the end follows]\n"
            await self._publish(self._run_id, note.encode())
        tail = b"".join(self._tail)
        self._tail.clear()
        for start in range(0, len(tail), CHUNK):
            await self._publish(self._run_id, tail[start : start + CHUNK])

    async def _pass(self, data: bytes) -> None:
        if not data:
            return
        if self._head_left > 0:
            head, data = data[: self._head_left], data[self._head_left :]
            self._head_left -= len(head)
            await self._publish(self._run_id, head)
        if data:
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        """Append to the tail, dropping (and counting) what falls out of it."""
        self._tail.append(data)
        self._tail_bytes += len(data)
        while self._tail_bytes > self._tail_limit:
            excess = self._tail_bytes - self._tail_limit
            first = self._tail[0]
            if len(first) <= excess:
                self._tail.popleft()
                dropped = len(first)
            else:
                self._tail[0] = first[excess:]
                dropped = excess
            self._tail_bytes -= dropped
            self._cut += dropped


class LogStreamer:
    """Output chunks to ``natsched.log.<agent>.<run_id>`` (stream NATSCHED_LOGS), best effort.

    A core publish, not an acknowledged one: output must never slow a run down. While
    NATS is away chunks are dropped; the run's event still carries the output tail.
    """

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.nc: Client | None = None

    async def publish(self, run_id: str, chunk: bytes) -> None:
        nc = self.nc
        if nc is not None and nc.is_connected:
            try:
                await nc.publish(subjects.log_subject(self.agent, run_id), chunk)
            except Exception:  # noqa: BLE001 - logs are best effort
                log.debug("log chunk of %s dropped", run_id)
