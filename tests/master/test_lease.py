"""The leader lease's fencing: a renewal counts from when it was sent, not from its answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsched.buckets import ensure_all
from natsched.master.lease import LeaderLease


class LateAnswers(KeyValue):
    """The real state bucket, except that ``meanwhile`` runs between an update landing and its answer."""

    def __init__(self, kv: KeyValue) -> None:
        self.__dict__.update(kv.__dict__)
        self.meanwhile: Callable[[], Awaitable[None]] | None = None

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        revision = await super().update(key, value, last=last, validate_keys=validate_keys)
        if self.meanwhile is not None:
            await self.meanwhile()
        return revision


async def test_a_renewal_answered_late_does_not_stretch_the_lease(nc: Client) -> None:
    """Frozen (or kept waiting) between its renewal landing and the answer, a leader must not
    count the lease from the answer: the standby, which saw the renewal when it landed, may
    have taken over by then, and two masters would both claim slots."""
    js = nc.jetstream()
    await ensure_all(js)
    state = await js.key_value("natsched_state")
    now = [1000.0]
    late = LateAnswers(state)
    first = LeaderLease(late, "m1", ttl=2.0, clock=lambda: now[0])
    second = LeaderLease(state, "m2", ttl=2.0, clock=lambda: now[0])
    await first._stand_by()
    assert first.held()

    async def frozen_before_the_answer() -> None:
        await second._stand_by()  # sees the renewal as it lands
        now[0] += 2.5  # the first master is frozen before it reads the answer
        await second._stand_by()  # no renewal for longer than the ttl: takes over

    late.meanwhile = frozen_before_the_answer
    await first._renew()
    assert second.held() and second.term == 2
    assert not first.held(), "the renewal was sent 2.5 s ago: no lease left"
