"""One open offer at a time for a load-balance run that may be dispatched again.

A run id derived from what started the run (a chain's claim, a subject message's sequence, a
held run, a lost run's re-dispatch) is sent again by a master that takes over a dispatch its
predecessor died in, or that got the same message twice. The agent that took it answers the
repeat without running it again, but a load-balance run may be offered to another agent the
second time (the first is busy with it now, or no longer the least loaded), and that agent's
claim key (``agent.<agent>.<run_id>``) is free: the run would run on both.

So before such a run is offered to a target, the master records the offer in
``offer.<run_id>`` (``natsched_claims``: the claim key of the target asked) and withdraws the
claim of the offer before it: if that agent took the run meanwhile, the run is taken there
and offered to nobody else; otherwise it can no longer take it. The record moves by
compare-and-set, so two masters offering the same run settle each other's offers first.
Run ids made fresh for one dispatch (manual triggers, scheduled slots, retries) are sent
once and never pay for this.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.claims import claim
from natsched.errors import ClaimUndecidedError, CodecError

SETTLE_TRIES = 5  # offers moved by other masters in between, before we call it undecided


@dataclass(frozen=True, slots=True)
class Offer:
    taken_by: str = ""  # the agent that took the run from an earlier offer: ask nobody


async def offer(kv: KeyValue, run_id: str, claim_key: str, *, master: str) -> Offer:
    """Make ``claim_key`` the run's only open offer (see module doc).

    Raises :class:`ClaimUndecidedError` when NATS does not tell (then offer it to nobody).
    """
    key = subjects.offer_key(run_id)
    mine = codec.pack({"claim": claim_key})
    try:
        for _ in range(SETTLE_TRIES):
            try:
                await kv.create(key, mine)
                return Offer()
            except KeyWrongLastSequenceError:
                entry = await kv.get(key)
            previous = _claim_of(entry.value, key)
            if previous == claim_key:
                return Offer()  # asked before: the agent answers a repeat without running it
            result = await claim(kv, previous, master=master)  # withdraw the earlier offer
            if not result.won and not result.holder.withdrawn:
                return Offer(taken_by=result.holder.agent)
            try:
                await kv.update(key, mine, last=entry.revision)
                return Offer()
            except KeyWrongLastSequenceError:
                continue  # another master moved the offer meanwhile: settle that one too
    except ClaimUndecidedError:
        raise
    except Exception as exc:  # noqa: BLE001 - unreachable, or garbage: nobody may act on it
        raise ClaimUndecidedError(f"offer {key} undecided: {exc!r}") from None
    raise ClaimUndecidedError(f"offer {key}: moved by other masters {SETTLE_TRIES} times")


def _claim_of(data: bytes | None, key: str) -> str:
    obj = codec.unpack(data or b"", f"offer {key}")
    value = obj.get("claim")
    if not isinstance(value, str) or not subjects.is_claim_key(value):
        raise CodecError(f"offer {key}: no claim key in it")
    return value
