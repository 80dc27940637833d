"""One run's output on its way to ``natsched.log.<run_id>``: secrets masked across writes.

The runner hands over output in the pieces the process wrote (coalesced up to 64 KiB);
a secret written in two pieces is masked all the same because :class:`StreamMasker`
holds back the end of a piece that could begin one. ``close`` (after the process ended
and its output was read) publishes what is still held.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from natsched.secrets import Masker, StreamMasker

Publish = Callable[[str, bytes], Awaitable[None]]


class RunOutput:
    def __init__(self, run_id: str, publish: Publish, masker: Masker) -> None:
        self._run_id = run_id
        self._publish = publish
        self._masked = StreamMasker(masker)

    async def write(self, chunk: bytes) -> None:
        data = self._masked.feed(chunk)
        if data:
            await self._publish(self._run_id, data)

    async def close(self) -> None:
        rest = self._masked.flush()
        if rest:
            await self._publish(self._run_id, rest)
