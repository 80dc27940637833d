"""Fan-in timeouts: a fan-in (``wait = "all"``) still waiting past its trigger's ``timeout``
fails its chain run. Every master keeps the pending fan-ins in view; the one whose pass comes
first records the failure (the chain claim decides between it and a join)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from natsched import codec, subjects
from natsched.chaingraph import event_triggers
from natsched.errors import CodecError
from natsched.master.chainstate import ChainRecords
from natsched.master.following import ACK_WAIT
from natsched.master.jobindex import JobIndex
from natsched.models import JobSpec
from natsched.triggers.event import EventTrigger

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.5
# A fan-in fails this long after its deadline: a completion from before the deadline that went
# to a master which then died is redelivered within ACK_WAIT, and must still count.
EXPIRY_GRACE = ACK_WAIT + 1.0

FailChain = Callable[[JobSpec, str, tuple[str, ...], str], Awaitable[None]]


def timed_out(trigger: EventTrigger | None, upstreams: dict[str, list[str]]) -> str:
    """The failure's reason: which upstreams did not come in time."""
    missing = sorted(set(trigger.after) - set(upstreams)) if trigger else []
    timeout = f"{trigger.timeout:g}s" if trigger else "its timeout"
    return f"chain failed: fan-in timed out after {timeout} waiting for {', '.join(missing)}"


def _split_fanin_key(key: str) -> tuple[str, str]:
    """``fanin.<chain>.<group>.<job>`` -> (chain id, job key)."""
    _, chain_id, job_key = key.split(".", 2)
    return chain_id, job_key


class FanInTimeouts:
    def __init__(
        self,
        js: JetStreamContext,
        records: ChainRecords,
        index: JobIndex,
        fail_chain: FailChain,
        *,
        durable: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._records = records
        self._index = index
        self._fail_chain = fail_chain
        self._durable = durable  # the chains consumer: completions not yet handled
        self._clock = clock
        self._pending: dict[str, tuple[float, int]] = {}  # key -> (deadline, revision)

    async def watch(self) -> None:
        """Keep the pending fan-ins in view (every master), so their timeouts can fire."""
        watcher = await self._records.bucket.watch(subjects.FANINS)
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._pending.pop(entry.key, None)
                continue
            try:
                deadline = float(codec.unpack(entry.value, entry.key)["deadline"])
            except (CodecError, KeyError, TypeError, ValueError):
                continue
            self._pending[entry.key] = (deadline, entry.revision or 0)

    async def expire(self) -> None:
        """Fail the fan-ins whose deadline passed, once no completion from before it can be pending.

        A completion delivered to a master that died comes back within ``ACK_WAIT``; one not
        yet delivered at all (no master ran) shows as the consumer's ``num_pending``.
        """
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            now = self._clock()
            due = [(k, r) for k, (deadline, r) in self._pending.items() if now >= deadline + EXPIRY_GRACE]
            if not due or await self._backlog():
                continue
            for key, revision in due:
                try:
                    await self._expire(key, revision)
                except Exception:  # noqa: BLE001 - tried again on the next pass
                    log.exception("fan-in %s: timeout handling failed", key)

    async def _expire(self, key: str, revision: int) -> None:
        pending, current = await self._records.read(key)
        if current != revision:
            return  # changed meanwhile (an upstream came in) or handled by another master
        chain_id, job_key = _split_fanin_key(key)
        spec = self._index.jobs.get(job_key)
        if spec is None:
            await self._records.delete(key, current)
            return
        upstreams: dict[str, list[str]] = pending.get("upstreams", {})
        trigger = next(
            (t for t in event_triggers(spec) if t.wait == "all" and set(upstreams) <= set(t.after)), None
        )
        parents = tuple(r for runs in upstreams.values() for r in runs)
        # Recorded before the progress is dropped: a master that dies in between leaves the
        # fan-in due, and the next pass (of whichever master leads) records it.
        await self._fail_chain(spec, chain_id, parents, timed_out(trigger, upstreams))
        await self._records.delete(key, current)

    async def _backlog(self) -> int:
        """Completions stored but not yet delivered to any master (they may belong to a fan-in)."""
        try:
            info = await self._js.consumer_info(subjects.EVENTS_STREAM, self._durable)
        except Exception as exc:  # noqa: BLE001 - cannot tell: wait for the next pass
            log.debug("chains consumer info failed: %r", exc)
            return 1
        return int(info.num_pending or 0)
