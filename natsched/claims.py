"""Who starts a dispatched run: a claim only one party can win.

An agent starts a run the master sent it (slave, or load-balance) only once it has
*claimed* it: created the run's key in ``natsched_claims`` (``agent.<agent>.<run_id>``,
or ``pool.<pool>.<run_id>`` when the pool's queue group delivered it). A master that
gives up on an agent (no answer within the dispatch timeout) creates the same key
itself, a *withdrawal*, before it records the run failed or offers it to the next agent.
A KV create is a compare-and-set decided by the server, so exactly one of the two wins,
whatever the hosts' clocks say and however long a frozen agent sat on the request: an
agent that loses runs nothing; a master that loses knows the agent has the run.

An agent's claim also names the run it is for (``ClaimedRun``: job, trigger, slot, attempt,
chain, when): an agent killed a few milliseconds after its start, its ``started`` event still
in its outbox, leaves the claim as the run's only record in JetStream; the leader closing
that agent's runs reads it (``natsched/master/lost.py``), also when the master that dispatched
the run died too. Agents write claims: a run named there is judged as one named in the
agent's heartbeat (re-dispatched only to a proven member of one of the job's pools).

Every key is written once. The ``nonce`` tells a write of ours whose acknowledgement was
lost (we won) from an earlier claim by the same agent (a dispatch repeated after a
crash: answered, not run again).

Pool membership: an agent's heartbeat names its pools, but the agent writes its heartbeat
itself, so a name there proves nothing. ``member.<pool>.<agent>`` does: only a credential
of that pool may write it (``natsched permissions``), and its value names the agent and the
pool (see ``is_membership``). Agents write theirs at start and refresh them within the
bucket's age limit; masters send a pool's runs by name only to agents whose proof is there
(``natsched/master/members.py``). Tags the same way: ``tagged.<tag>.<agent>``, which only a
credential given that tag may write (``natsched permissions --agent-tags``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ClaimUndecidedError, CodecError

log = logging.getLogger(__name__)
# A claim whose write or read-back NATS did not answer is asked about again, after 0.1 s and
# 0.2 s: a reconnect or a leader election often ends within that. Each try can take nats-py's
# request timeout (5 s) when NATS is gone; the master's dispatch timeout decides meanwhile.
DECIDE_TRIES = 3
DECIDE_PAUSE = 0.1


# The detail keys a claim carries (and a lost run's re-dispatch keeps): its chain's, in this
# order while they fit in MAX_CARRIED bytes: the whole claim must stay within the bucket's
# CLAIM_MAX_VALUE (1 KB; the rest of a claim with the longest names is ~330 bytes), or the
# agent's claim, and so the run, would fail. A fan-in with many parents loses "parents".
CARRIED_DETAIL = ("chain_id", "parents")
MAX_CARRIED = 400


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedRun:
    """The run a claim is for, as the agent knew it when it claimed (see module doc)."""

    job: str  # <group>.<job>
    trigger: str
    scheduled_at: float | None = None
    attempt: int = 1
    detail: Mapping[str, str] = field(default_factory=dict)  # CARRIED_DETAIL keys only
    at: float = field(default_factory=time.time)  # the agent's clock

    @classmethod
    def of(
        cls,
        job: str,
        trigger: str,
        scheduled_at: float | None,
        attempt: int,
        detail: Mapping[str, str],
        at: float | None = None,
    ) -> ClaimedRun:
        carried, room = {}, MAX_CARRIED
        for name in CARRIED_DETAIL:
            value = detail.get(name)
            size = len(value.encode()) if isinstance(value, str) else room + 1
            if isinstance(value, str) and size <= room:
                carried[name] = value
                room -= size
        return cls(
            job=job,
            trigger=trigger,
            scheduled_at=scheduled_at,
            attempt=attempt,
            detail=carried,
            at=time.time() if at is None else float(at),
        )

    def plain(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "trigger": self.trigger,
            "scheduled_at": self.scheduled_at,
            "attempt": self.attempt,
            "detail": dict(self.detail),
            "at": self.at,
        }


def _claimed_run(obj: object) -> ClaimedRun | None:
    """The run an agent's claim names; None when it names none, or nothing valid (agents write
    claims: a garbage run is ignored, the claim still decides who runs it)."""
    if not isinstance(obj, dict):
        return None
    job, trigger, slot, attempt, detail, at = (
        obj.get(k) for k in ("job", "trigger", "scheduled_at", "attempt", "detail", "at")
    )
    if not (isinstance(job, str) and isinstance(trigger, str) and isinstance(detail, dict)):
        return None
    if not isinstance(at, int | float) or not isinstance(attempt, int) or not _job_key(job):
        return None
    if isinstance(at, bool) or isinstance(attempt, bool) or isinstance(slot, bool):
        return None
    if slot is not None and not isinstance(slot, int | float):
        return None
    return ClaimedRun.of(job, trigger[:64], slot, max(1, attempt), detail, at)


def _job_key(job: str) -> bool:
    try:
        subjects.split_job_key(job)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True, slots=True)
class Claim:
    agent: str  # the agent that runs the run; "" when a master withdrew the dispatch
    master: str = ""  # the master that withdrew it
    nonce: str
    run: ClaimedRun | None = None  # what an agent claimed (None: a withdrawal, or an older agent)

    @property
    def withdrawn(self) -> bool:
        return not self.agent

    def describe(self) -> str:
        if self.withdrawn:
            return f"withdrawn by master {self.master or '?'} (it gave up waiting for an answer)"
        return f"taken by agent {self.agent}"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    won: bool
    holder: Claim  # the claim on record: ours when won


def encode_claim(claim: Claim) -> bytes:
    obj: dict[str, Any] = {"agent": claim.agent, "master": claim.master, "nonce": claim.nonce}
    if claim.run is not None:
        obj["run"] = claim.run.plain()
    return codec.pack(obj)


def decode_claim(data: bytes | None, key: str) -> Claim:
    obj = codec.unpack(data or b"", f"claim {key}")
    obj.pop(codec.VERSION_KEY)
    try:
        return Claim(
            agent=str(obj["agent"]),
            master=str(obj.get("master", "")),
            nonce=str(obj["nonce"]),
            run=_claimed_run(obj.get("run")),
        )
    except KeyError as exc:
        raise CodecError(f"claim {key}: missing {exc}") from None


async def open_claims(js: JetStreamContext) -> KeyValue:
    return await js.key_value(subjects.CLAIMS_BUCKET)


async def claim(
    kv: KeyValue, key: str, *, agent: str = "", master: str = "", run: ClaimedRun | None = None
) -> ClaimResult:
    """Create ``key`` for ``agent`` (a claim) or ``master`` (a withdrawal); say who holds it.

    A write whose answer is lost may or may not have landed (or land later): the key is read
    back, and written again with the same nonce while it holds nothing, so a late first write
    still tells; NATS failing meanwhile is tried again ``DECIDE_TRIES`` times in all. Raises
    :class:`ClaimUndecidedError` when NATS still does not tell: then nobody may act as if it
    had won (the agent runs nothing; the master offers the run to no one else).
    """
    mine = Claim(agent=agent, master=master, nonce=secrets.token_hex(8), run=run)
    value = encode_claim(mine)
    failure: Exception | None = None
    for attempt in range(DECIDE_TRIES):
        if attempt:
            await asyncio.sleep(DECIDE_PAUSE * 2 ** (attempt - 1))
        try:
            await kv.create(key, value)
            return ClaimResult(True, mine)
        except KeyWrongLastSequenceError:
            pass  # someone was first (maybe our own earlier write): the record says who
        except Exception as exc:  # noqa: BLE001 - the write may or may not have landed: read it back
            failure = exc
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue  # nothing there (yet): write it again
        except Exception as exc:  # noqa: BLE001 - unreachable for now: ask again
            failure = exc
            continue
        try:
            holder = decode_claim(entry.value, key)
        except CodecError as exc:  # a value nobody of ours wrote: asking again will not help
            raise ClaimUndecidedError(f"claim {key} undecided: {exc}") from None
        return ClaimResult(holder.nonce == mine.nonce, holder)
    raise ClaimUndecidedError(f"claim {key} undecided: {failure!r}")


Kind = Literal["pool", "tag"]


def membership_key(kind: Kind, name: str, agent: str) -> str:
    """The key proving ``agent`` is of pool ``name`` / carries tag ``name``."""
    return subjects.pool_member_key(name, agent) if kind == "pool" else subjects.tag_member_key(name, agent)


def encode_membership(agent: str, name: str, kind: Kind = "pool") -> bytes:
    return codec.pack({"agent": agent, kind: name, "since": time.time()})


def is_membership(data: bytes | None, agent: str, name: str, kind: Kind = "pool") -> bool:
    """True if ``data`` is the proof ``agent`` wrote for pool (or tag) ``name``.

    The key alone proves nothing: nats-server itself writes any subject a client names as the
    reply of a JetStream publish (its acknowledgement, ``{"stream": …, "seq": …}``), unchecked
    against that client's permissions, so an agent of no pool could have its membership key
    written for it. Such a value does not name the agent and the pool.
    """
    try:
        value = codec.unpack(data or b"", "membership")
    except CodecError:
        return False
    since = value.get("since")
    return (
        value.get("agent") == agent
        and value.get(kind) == name
        and isinstance(since, int | float)
        and not isinstance(since, bool)
    )


async def prove_membership(kv: KeyValue, agent: str, pools: Iterable[str], tags: Iterable[str] = ()) -> None:
    """Write ``agent``'s proof of each pool and tag (raises when one is not written)."""
    proofs: list[tuple[Kind, Iterable[str]]] = [("pool", pools), ("tag", tags)]
    for kind, names in proofs:
        for name in sorted(names):
            await kv.put(membership_key(kind, name, agent), encode_membership(agent, name, kind))


PROOF_REFRESH = 3600.0  # an agent rewrites its proofs at least this often (a quarter of the TTL if less)


def proof_refresh(ttl: float | None) -> float:
    """How often an agent rewrites its proofs in a claims bucket of this TTL."""
    return min(PROOF_REFRESH, ttl / 4) if ttl else PROOF_REFRESH


def proof_max_age(ttl: float | None) -> float:
    """How old (on the server's clock) a proof may be and still count: two refreshes missed,
    plus some slack. An agent whose credential lost a tag (or pool) cannot rewrite its proof;
    without this bound the old one counted until the bucket's TTL (a day) dropped it."""
    refresh = proof_refresh(ttl)
    return 2 * refresh + min(60.0, refresh)


async def proof_age(js: JetStreamContext, agent: str, name: str, kind: Kind = "pool") -> float | None:
    """Seconds since ``agent`` last wrote its proof of pool (or tag) ``name``, on the server's
    clock; None when there is no proof (no key, deleted, or not the agent's own value)."""
    bucket = subjects.CLAIMS_BUCKET
    subject = subjects.kv_subject_prefix(bucket) + membership_key(kind, name, agent)
    try:
        msg = await js.get_msg(subjects.kv_stream(bucket), subject=subject)
    except NotFoundError:
        return None
    if (msg.headers or {}).get("KV-Operation") or msg.time is None:  # deleted or purged
        return None
    if not is_membership(msg.data, agent, name, kind):
        return None
    return max(0.0, (datetime.now(UTC) - msg.time).total_seconds())
