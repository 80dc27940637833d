"""A run claim whose answer NATS lost is still decided (natsched/claims.py ``claim``).

The write of a claim may land while its answer is lost, or land after the writer gave up on
it; the read-back may fail too, for a moment. Undecided, the agent refuses a run it holds the
claim of: the run never runs anywhere (a repeated dispatch is answered "taken"), and a retry
sees it held by the agent, so it is not retried either. Here the claims bucket is real and
only the answers are lost, as a NATS hiccup loses them.
"""

from __future__ import annotations

from typing import cast

import nats.errors
from nats.aio.client import Client
from nats.js.kv import KeyValue

from natsched.buckets import ensure_all
from natsched.claims import claim, decode_claim, open_claims


class LossyAnswers:
    """The claims bucket, with the answers of some calls lost (the calls themselves may land)."""

    def __init__(self, kv: KeyValue, *, write_lands_late: bool = False, lost_reads: int = 0) -> None:
        self._kv = kv
        self._late: tuple[str, bytes] | None = None
        self._write_lands_late = write_lands_late
        self._lost_reads = lost_reads
        self.writes_lost = 0

    async def create(self, key: str, value: bytes) -> int:
        if self._late is not None:  # the first write lands now, after its writer gave up on it
            late, self._late = self._late, None
            await self._kv.create(*late)
        if not self.writes_lost:
            self.writes_lost += 1
            if self._write_lands_late:
                self._late = (key, value)
            else:
                await self._kv.create(key, value)  # landed; only the answer is lost
            raise nats.errors.TimeoutError
        return await self._kv.create(key, value)

    async def get(self, key: str) -> KeyValue.Entry:
        if self._lost_reads:
            self._lost_reads -= 1
            raise nats.errors.TimeoutError
        return await self._kv.get(key)


async def test_a_claim_whose_answer_and_first_read_back_were_lost_is_won(nc: Client) -> None:
    await ensure_all(nc.jetstream())
    kv = await open_claims(nc.jetstream())
    lossy = LossyAnswers(kv, lost_reads=1)
    result = await claim(cast(KeyValue, lossy), "agent.a1.run-1", agent="a1")
    assert result.won and result.holder.agent == "a1"
    assert decode_claim((await kv.get("agent.a1.run-1")).value, "k").nonce == result.holder.nonce


async def test_a_claim_written_late_after_its_writer_gave_up_is_won_not_left_undecided(nc: Client) -> None:
    await ensure_all(nc.jetstream())
    kv = await open_claims(nc.jetstream())
    lossy = LossyAnswers(kv, write_lands_late=True)
    result = await claim(cast(KeyValue, lossy), "agent.a1.run-2", agent="a1")
    assert result.won  # the key holds our claim: we are the one who may run it
    assert decode_claim((await kv.get("agent.a1.run-2")).value, "k").nonce == result.holder.nonce


async def test_a_withdrawal_landing_first_still_wins_over_the_agent(nc: Client) -> None:
    """The read-back decides: a master's withdrawal there means the agent lost, whatever its write did."""
    await ensure_all(nc.jetstream())
    kv = await open_claims(nc.jetstream())
    withdrawn = await claim(kv, "agent.a1.run-3", master="m1")
    result = await claim(cast(KeyValue, LossyAnswers(kv, lost_reads=1)), "agent.a1.run-3", agent="a1")
    assert withdrawn.won and not result.won and result.holder.withdrawn
