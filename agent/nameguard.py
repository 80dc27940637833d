"""One agent per name: the heartbeat key is written with compare-and-set.

Two agents with one name would both run every mirror job and answer each other's run
requests. So the first heartbeat *creates* the key ``natsched_agents/<name>``; when it is
there already, the agent refuses to start, in one line naming where the other one runs
(host, pid, since), unless that heartbeat is a previous run of this very agent (same host,
process gone, e.g. after kill -9 and a restart). The bucket's TTL removes the key of an
agent silent for longer than the TTL, so such a name is free again. Later heartbeats
update the key only from the revision this agent wrote last: an agent that was silent
past the TTL (frozen, cut off) and finds its name taken over by another stops instead of
running beside it.

Such an agent must also not run anything of its own before that heartbeat: woken from a
freeze, its mirror schedule would at once catch up every slot it slept through, slots the
agent that took the name has run already. :class:`NameGate` holds its own schedules until a
heartbeat confirmed the name (or found it taken) whenever the last confirmation is older than
the TTL while NATS is reachable, and before the first heartbeat of the process; cut off from
NATS (at start: its first connect attempt failed) it runs from its cache, as promised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from datetime import UTC, datetime

import psutil
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec
from natsched.buckets import AGENT_TTL
from natsched.errors import CodecError, NameTakenError
from natsched.models import Heartbeat

log = logging.getLogger(__name__)
STARTUP_SLACK = 2.0  # seconds between a process's creation and its agent's started_at


def where(heartbeat: Heartbeat) -> str:
    since = datetime.fromtimestamp(heartbeat.started_at, UTC).isoformat(timespec="seconds")
    return f"host {heartbeat.host or '?'}, pid {heartbeat.pid or '?'}, since {since}"


def taken(heartbeat: Heartbeat) -> NameTakenError:
    return NameTakenError(
        f"agent name {heartbeat.agent!r} is taken: it runs on {where(heartbeat)}; stop that agent "
        f"or use another --name (a name is free {AGENT_TTL:g} s after its agent's last heartbeat)"
    )


def _alive(pid: int, started_at: float) -> bool:
    """Is ``pid`` the process that wrote a heartbeat started at ``started_at`` (not a reused pid)?"""
    try:
        return bool(psutil.Process(pid).create_time() <= started_at + STARTUP_SLACK)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def is_ours(holder: Heartbeat) -> bool:
    """The holder is this process, or an agent of this host whose process is gone."""
    if holder.host != socket.gethostname():
        return False
    return holder.pid == os.getpid() or not _alive(holder.pid, holder.started_at)


async def _holder(kv: KeyValue, name: str) -> tuple[Heartbeat | None, int] | None:
    """The heartbeat under ``name`` and its revision (None: unreadable); None: no key."""
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:  # also a deleted key
        return None
    try:
        return codec.decode_heartbeat(entry.value or b"", name), entry.revision or 0
    except CodecError as exc:  # unreadable (another version?): not proof of a live agent
        # Taken over at its revision: a create failed on it, and the agent stopped ("keeps
        # changing hands"). Another agent had nats-server write its acknowledgement here.
        log.warning("heartbeat key %s is unreadable (%s); taking it over", name, exc)
        return None, entry.revision or 0


async def take(kv: KeyValue, heartbeat: Heartbeat, data: bytes) -> int:
    """Write the first heartbeat (the name is ours from now on); its revision.

    Raises :class:`NameTakenError` when a live agent elsewhere holds the name.
    """
    for _ in range(3):  # the key may change under us (expire, be taken) between read and write
        held = await _holder(kv, heartbeat.agent)
        try:
            if held is None:
                return await kv.create(heartbeat.agent, data)
            holder, revision = held
            if holder is not None:
                if not is_ours(holder):
                    raise taken(holder)
                log.info(
                    "agent %s takes its name back from a previous run (%s)", heartbeat.agent, where(holder)
                )
            return await kv.update(heartbeat.agent, data, last=revision)
        except KeyWrongLastSequenceError:
            continue
    held = await _holder(kv, heartbeat.agent)
    if held is not None and held[0] is not None:
        raise taken(held[0])
    raise NameTakenError(f"agent name {heartbeat.agent!r} keeps changing hands")


async def renew(kv: KeyValue, heartbeat: Heartbeat, data: bytes, revision: int) -> int:
    """A later heartbeat, written only over our own last one; the new revision."""
    try:
        return await kv.update(heartbeat.agent, data, last=revision)
    except KeyWrongLastSequenceError:
        pass
    held = await _holder(kv, heartbeat.agent)
    if held is None:  # expired (silent past the TTL, or the bucket was recreated): take it again
        return await take(kv, heartbeat, data)
    holder, current = held
    if holder is None or is_ours(holder):  # unreadable; our own write whose ack was lost; a tool's
        return await kv.update(heartbeat.agent, data, last=current)
    raise NameTakenError(
        f"agent name {heartbeat.agent!r} was taken over by the agent on {where(holder)} "
        "while this one was silent past the heartbeat TTL; stopping"
    )


CONFIRM_WAIT = 3.0  # seconds a woken agent waits for its heartbeat before it runs anyway


class NameGate:
    """May this agent run its own schedules now? See the module's docstring.

    ``hold_start``: also before the first heartbeat of this process (the agent's own gate). A
    state dir started again while another agent holds its name (systemd restarting an agent
    that stopped because its name was taken over, every 2 s) would otherwise catch up, from
    its cache, the slots the other agent has run, before its first heartbeat refuses it.
    """

    def __init__(
        self, *, ttl: float = AGENT_TTL, wait: float = CONFIRM_WAIT, hold_start: bool = False
    ) -> None:
        self._ttl, self._wait, self._hold_start = ttl, wait, hold_start
        self._confirmed_at: float | None = None  # monotonic: the last heartbeat written
        self._confirmed = asyncio.Event()
        self._connected = False
        self.wanted = asyncio.Event()  # the heartbeat loop sends at once when this is set
        self.taken = False

    def set_connected(self, connected: bool) -> None:
        self._connected = connected

    def confirm(self, sent: float | None = None) -> None:
        """A heartbeat was written: the name is ours, as of ``sent`` (monotonic; default now)."""
        self._confirmed_at = time.monotonic() if sent is None else sent
        self._confirmed.set()

    def unreachable(self) -> None:
        """A connect attempt failed: before a first heartbeat, the start-up hold ends (NATS is
        not there to confirm anything soon: the agent runs from its cache, as promised)."""
        if self._confirmed_at is None and self._hold_start:
            self._hold_start = False
            self._confirmed.set()

    def refuse(self) -> None:
        """The name is another agent's now: run nothing more."""
        self.taken = True
        self._confirmed.set()

    async def ready(self) -> bool:
        if self.taken:
            return False
        if self._confirmed_at is None:
            if self._hold_start:  # the first heartbeat is on its way
                return await self._confirmation("of starting")
            return True
        if not self._connected:
            return True  # cut off from NATS: the cache is what there is
        if self._fresh():
            return True
        return await self._confirmation("after a silence past the TTL")

    def _fresh(self) -> bool:
        return self._confirmed_at is not None and time.monotonic() - self._confirmed_at < self._ttl

    def _released(self) -> bool:
        return self._confirmed_at is None and not self._hold_start

    async def _confirmation(self, when: str) -> bool:
        """Wait (bounded) for a heartbeat to confirm the name or find it taken; False if taken."""
        try:
            async with asyncio.timeout(self._wait):
                while not (self.taken or self._fresh() or self._released()):
                    # (Again when a heartbeat sent before the silence, its ack read only now,
                    # confirmed the name as of then: no proof that it is still ours.)
                    self._confirmed.clear()
                    self.wanted.set()
                    await self._confirmed.wait()
        except TimeoutError:
            log.warning("no heartbeat within %gs %s; running anyway", self._wait, when)
            self._confirmed_at = time.monotonic()  # not again for every run
        return not self.taken
