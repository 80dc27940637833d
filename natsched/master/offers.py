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
once and pay only for the record, written alongside the first request (``note_offer``).

The record is also the masters' word that the run went to that agent (``handed``): an agent
that goes silent has its open runs of a ``redispatch_lost`` job started again only if the
record names that agent's claim of them (for a run taken from a pool's queue group, the
pool claim and the agent that answered the master: ``note_taker``). An agent's own
heartbeat, events and claims are what it says; a pool member could list made-up runs there
(or write a pool claim naming another member, or overwrite one with its own name) and have
them run again elsewhere when it, or that member, was lost.
Agents cannot write ``offer.*``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.claims import claim
from natsched.errors import ClaimUndecidedError, CodecError, NatschedError

log = logging.getLogger(__name__)

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


async def note_offer(kv: KeyValue, run_id: str, claim_key: str) -> None:
    """Record the first offer of a run id made fresh for this dispatch (nobody else offers it:
    no earlier offer to settle). Sent with the run request; a failure only means a lost run of
    it is not started again (logged by the caller)."""
    await kv.create(subjects.offer_key(run_id), codec.pack({"claim": claim_key}))


async def note_taker(kv: KeyValue, run_id: str, claim_key: str, agent: str) -> None:
    """Record that ``agent`` took ``run_id`` from a pool's queue group (``claim_key``, the pool
    claim): its answer to the master says so. The pool claim names the agent too, but every
    member of the pool may write it: a member that overwrote it with its own name and went
    silent had the run started again while it still ran on the member that took it. Final:
    a taken run's offer no longer moves (``offer`` settles on its claim)."""
    await kv.put(subjects.offer_key(run_id), codec.pack({"claim": claim_key, "agent": agent}))


async def handed(kv: KeyValue, run_id: str, agent: str) -> bool:
    """Did a master hand ``run_id`` to ``agent``: does its offer record name the agent's claim,
    or a pool claim and the agent that answered the master that it took it (``note_taker``)?"""
    try:
        return _hands((await kv.get(subjects.offer_key(run_id))).value, run_id, agent)
    except (KeyNotFoundError, NatschedError, ValueError):
        return False


def _hands(data: bytes | None, run_id: str, agent: str) -> bool:
    key = subjects.offer_key(run_id)
    try:
        claim_key = _claim_of(data, key)
        if claim_key == subjects.agent_claim_key(agent, run_id):
            return True
        taker = codec.unpack(data or b"", key).get("agent")
        pooled = subjects.is_pool_claim_key(claim_key) and subjects.claim_run_id(claim_key) == run_id
    except (CodecError, NatschedError, ValueError):
        return False
    return pooled and taker == agent


async def keep_offers(
    claims: Callable[[], Awaitable[KeyValue]],
    running: Callable[[], Awaitable[Iterable[tuple[str, str]]]],
    every: float,
) -> None:
    """A leader duty: every ``every`` seconds (a quarter of the claims bucket's TTL) rewrite,
    unchanged, the offer record of each ``(run_id, agent)`` still running whose record says it
    was handed to that agent, so that a run going on longer than the TTL (a day) is still
    started again if its agent is lost. Only a record that already names the agent is
    rewritten: what an agent lists as running cannot make one."""
    while True:
        await asyncio.sleep(every)
        try:
            kv = await claims()
            for run_id, agent in await running():
                key = subjects.offer_key(run_id)
                with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
                    entry = await kv.get(key)
                    if _hands(entry.value, run_id, agent):
                        await kv.update(key, entry.value or b"", last=entry.revision)
        except Exception as exc:  # noqa: BLE001 - NATS away: the next round tries again
            log.warning("offer records of running runs not kept this round: %r", exc)
