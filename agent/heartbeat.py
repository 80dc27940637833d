"""The agent's heartbeat: load and identity, put to the agents TTL bucket every few seconds.

A heartbeat that stops arriving expires from the bucket (TTL), which is how the
master and ``natsched agents`` tell a live agent from a dead one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

import psutil
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from agent import nameguard
from natsched import PROTOCOL_VERSION, __version__, codec, subjects
from natsched.claims import PROOF_REFRESH, open_claims, proof_refresh, prove_membership
from natsched.errors import NameTakenError
from natsched.models import Heartbeat

log = logging.getLogger(__name__)


class HeartbeatPublisher:
    """Heartbeats with compare-and-set on the key (see ``agent/nameguard.py``)."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        build: Callable[[], Awaitable[Heartbeat]],
        interval: float,
        gate: nameguard.NameGate | None = None,
    ) -> None:
        self._js = js
        self._build = build
        self._interval = interval
        self._gate = gate or nameguard.NameGate()
        self._kv: KeyValue | None = None
        self._revision: int | None = None
        self._key = ""  # the agent's name, once a heartbeat was written
        self.sent = 0

    async def take_name(self) -> None:
        """The first heartbeat: raises NameTakenError when a live agent elsewhere has this name.

        Any other failure waits for the heartbeat loop (which takes the name then); a credential
        that may not write this key is caught by the agent's credential watch.
        """
        try:
            await self._send()
        except NameTakenError:
            raise
        except BucketNotFoundError:
            log.info("bucket %s does not exist yet; heartbeat waits for a master", subjects.AGENTS_BUCKET)
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("first heartbeat not sent: %r", exc)

    async def _send(self) -> None:
        if self._kv is None:
            self._kv = await self._js.key_value(subjects.AGENTS_BUCKET)
        heartbeat = await self._build()
        self._key = heartbeat.agent
        data = codec.encode_heartbeat(heartbeat)
        # The name is ours as of the write, not of its ack: an agent frozen in between (SIGSTOP,
        # a VM pause) reads the ack when it wakes, maybe after its name expired and was taken.
        sent = time.monotonic()
        try:
            if self._revision is None:
                self._revision = await nameguard.take(self._kv, heartbeat, data)
            else:
                self._revision = await nameguard.renew(self._kv, heartbeat, data, self._revision)
        except NameTakenError:
            self._gate.refuse()
            raise
        self._gate.confirm(sent)
        self.sent += 1

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            # Cleared before the send: a gate asking meanwhile wants a heartbeat sent after it asked.
            self._gate.wanted.clear()
            try:
                await self._send()
            except BucketNotFoundError:
                log.info("bucket %s does not exist yet; heartbeat waits for a master", subjects.AGENTS_BUCKET)
            except NameTakenError:
                raise  # stops the agent: another one runs under this name
            except Exception as exc:  # noqa: BLE001 - NATS hiccups must not stop the heartbeat
                log.debug("heartbeat not sent: %r", exc)
            with contextlib.suppress(TimeoutError):  # or at once when the gate asks (woken)
                async with asyncio.timeout(max(0.0, self._interval - (time.monotonic() - started))):
                    await self._gate.wanted.wait()

    async def withdraw(self, timeout: float) -> None:
        """On a clean stop: delete our heartbeat, so masters and ``natsched agents`` drop this
        agent at once instead of after the TTL. Only our own latest write (compare-and-set on
        its revision): a heartbeat another process wrote since under this name stays."""
        if self._kv is None or self._revision is None or not self._key:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._kv.delete(self._key, last=self._revision)
            log.info("heartbeat %s withdrawn", self._key)
        except Exception as exc:  # noqa: BLE001 - then it expires with the TTL, as after a crash
            log.info("heartbeat %s not withdrawn (%r); it expires with the bucket's TTL", self._key, exc)


PROOF_RETRY = 2.0  # seconds between attempts while the membership keys are not written
PROOF_TIMEOUT = 2.0  # the first attempt, before the first heartbeat: must not hold up the start


class MembershipProof:
    """Keeps this agent's pool membership and tag keys (``natsched/claims.py``) in the claims
    bucket.

    The keys live as long as the bucket's TTL: refreshed four times within it. Until they are
    written, masters send this agent a pool's runs only through the pool's queue group, and
    none of the runs of jobs aimed at its tags.
    """

    def __init__(
        self, js: JetStreamContext, agent: str, pools: frozenset[str], tags: frozenset[str] = frozenset()
    ) -> None:
        self._js = js
        self._agent = agent
        self._pools = pools
        self._tags = tags
        self._kv: KeyValue | None = None
        self._refresh = PROOF_REFRESH  # until the bucket's TTL is read
        self._failed = ""  # the last failure logged (each kind once)
        self.proven = not (pools or tags)

    async def once(self) -> bool:
        if not (self._pools or self._tags):
            return True
        try:
            async with asyncio.timeout(PROOF_TIMEOUT):
                if self._kv is None:
                    kv = await open_claims(self._js)
                    self._refresh = proof_refresh((await kv.status()).ttl)  # masters count it as long
                    self._kv = kv
                await prove_membership(self._kv, self._agent, self._pools, self._tags)
        except Exception as exc:  # noqa: BLE001 - NATS away, no bucket yet, or an old credential
            if type(exc).__name__ != self._failed:
                self._failed = type(exc).__name__
                log.warning(
                    "pool membership and tags of %s (%s) not all written (%r): masters send it "
                    "pool runs only through the pool's queue group, and no run of a job aimed at "
                    "a tag it has not proven, until they are (does its credential come from this "
                    "version's 'natsched permissions', with --agent-tags for its tags?)",
                    self._agent,
                    ", ".join([*sorted(self._pools), *(f"tag {t}" for t in sorted(self._tags))]),
                    exc,
                )
            return False
        if self._failed:
            log.info("pool membership and tags of %s written", self._agent)
        self._failed = ""
        self.proven = True
        return True

    async def run(self) -> None:
        ok = self.proven
        while True:
            await asyncio.sleep(self._refresh if ok else PROOF_RETRY)
            ok = await self.once()


def sample_load(
    *,
    agent: str,
    started_at: float,
    running: int,
    max_concurrency: int,
    tags: frozenset[str],
    pools: frozenset[str],
    groups: frozenset[str],
    jobs_cached: int,
    synced_revision: int,
    connected_since: float,
    priority: int = 100,
    runs: dict[str, str] | None = None,
) -> Heartbeat:
    """Build a heartbeat from psutil's view of this host (non-blocking calls only)."""
    return Heartbeat(
        agent=agent,
        version=__version__,
        protocol=PROTOCOL_VERSION,
        sent_at=time.time(),
        started_at=started_at,
        load1=os.getloadavg()[0],
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=psutil.virtual_memory().percent,
        running=running,
        max_concurrency=max_concurrency,
        tags=tuple(sorted(tags)),
        pools=tuple(sorted(pools)),
        groups=tuple(sorted(groups)),
        jobs_cached=jobs_cached,
        synced_revision=synced_revision,
        runs=runs or {},
        connected_since=connected_since,
        priority=priority,
        host=socket.gethostname(),
        pid=os.getpid(),
    )
