"""The live agents as the master sees them (heartbeats), and who a run goes to.

``AgentDirectory`` follows the agents bucket; ``slave_targets`` and
``load_balance_order`` pick, from its live heartbeats, the agents a run is offered to
(the selection rule is in ``dispatch.py``'s docstring).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime

from nats.aio.client import Client

from natsched import codec, subjects
from natsched.errors import CodecError, VersionError
from natsched.kvscan import scan
from natsched.master.members import PoolMembers
from natsched.models import ALL_AGENTS, AgentIdentity, Balance, Heartbeat, JobSpec
from natsched.quietlog import Throttled
from natsched.vocab import NO_AGENT

log = logging.getLogger(__name__)
quiet = Throttled(log)  # what a sender can cause, once per 10 s

_METRIC: dict[Balance, Callable[[Heartbeat], float]] = {
    Balance.LOAD: lambda hb: hb.load1,
    Balance.CPU: lambda hb: hb.cpu_percent,
    Balance.MEMORY: lambda hb: hb.memory_percent,
    Balance.RUNNING: lambda hb: float(hb.running),
}


def identity_of(hb: Heartbeat) -> AgentIdentity:
    return AgentIdentity(
        name=hb.agent, tags=frozenset(hb.tags), pools=frozenset(hb.pools), groups=frozenset(hb.groups)
    )


def slave_targets(spec: JobSpec, live: list[Heartbeat]) -> list[str]:
    """Every agent a slave run goes to: named ones (live or not), plus live ones matching tags/pools/*."""
    targets = spec.targets
    if not targets.tags and not targets.pools and ALL_AGENTS not in targets.agents:
        return list(dict.fromkeys(targets.agents))  # by name only: no heartbeat adds one
    names = [a for a in targets.agents if a != ALL_AGENTS]
    for hb in live:
        if _identity(hb).takes(spec.group, targets):
            names.append(hb.agent)
    return list(dict.fromkeys(names))


# Each live heartbeat's identity, built once (not per dispatch per agent: 50 agents made 50
# identities with three frozensets each for every run of a tag-targeted job).
_IDENTITIES: dict[int, tuple[Heartbeat, AgentIdentity]] = {}
IDENTITIES = 4096
LIFE_STARTS = 10_000  # agent lives whose start on the server's clock is kept


def _identity(hb: Heartbeat) -> AgentIdentity:
    cached = _IDENTITIES.get(id(hb))
    if cached is not None and cached[0] is hb:  # held here, so its id is not reused meanwhile
        return cached[1]
    if len(_IDENTITIES) >= IDENTITIES:
        _IDENTITIES.pop(next(iter(_IDENTITIES)))
    identity = identity_of(hb)
    _IDENTITIES[id(hb)] = (hb, identity)
    return identity


def load_balance_order(
    spec: JobSpec, live: list[Heartbeat], sent: Mapping[str, int] | None = None
) -> list[str]:
    """The candidates of a load-balance job, in the order they are asked (see module doc).

    ``sent``: runs this master started on each agent since that agent's last heartbeat. A
    heartbeat is up to an interval old, so without them a burst of runs all goes to the
    agent that looked idle: they count as running (and as load) until the next heartbeat.
    """
    sent = sent or {}
    pools = set(spec.targets.pools)
    candidates = [
        hb
        for hb in live
        if pools.intersection(hb.pools)
        and hb.running + sent.get(hb.agent, 0) < hb.max_concurrency
        and (not hb.groups or spec.group in hb.groups)
    ]
    if spec.balance is Balance.PRIORITY:
        failover = {name: index for index, name in enumerate(spec.targets.agents)}
        candidates.sort(key=lambda hb: (failover.get(hb.agent, len(failover)), hb.priority, hb.agent))
    elif spec.balance in (Balance.RUNNING, Balance.LOAD):
        metric = _METRIC[spec.balance]
        candidates.sort(key=lambda hb: (metric(hb) + sent.get(hb.agent, 0), hb.priority, hb.agent))
    else:  # a percentage has no per-run share: among equal figures, the one given fewer runs first
        metric = _METRIC[spec.balance]
        candidates.sort(key=lambda hb: (metric(hb), sent.get(hb.agent, 0), hb.priority, hb.agent))
    return [hb.agent for hb in candidates]


class AgentDirectory:
    """The live agents, kept current by watching the agents bucket (no read per dispatch).

    A heartbeat that expires from the TTL bucket arrives as a delete marker and removes
    the agent. Until the watch has caught up, ``live`` falls back to reading the bucket.
    Every heartbeat kept here names only the pools its agent proved (``members.py``).
    """

    def __init__(self, nc: Client) -> None:
        self._js = nc.jetstream()
        self.members = PoolMembers(self._js)
        self._agents: dict[str, Heartbeat] = {}
        self._ready = False
        # Every agent ever seen by this master: last heartbeat and when it arrived (monotonic),
        # kept when the heartbeat expires, for the leader's lost-agent check.
        self.last_seen: dict[str, tuple[Heartbeat, float]] = {}
        self.incompatible: dict[str, str] = {}  # agent -> why (a heartbeat of a newer protocol)
        # Runs this master started on each agent since its last heartbeat arrived (load balancing).
        self.sent: dict[str, int] = {}
        # Told every heartbeat as it arrives, on every master, leader or not (lost.py notes
        # agent restarts with it: one seen only by a loop that runs while leading was missed
        # when it came before this master led).
        self.listeners: list[Callable[[Heartbeat], None]] = []
        # Each agent life's start on the server's clock: its heartbeats' arrival in the bucket
        # less their age on the agent's own clock. The streams a lost agent's runs are read from
        # keep the server's time, and an agent's clock may be far off (``openruns.since``).
        self.life_starts: dict[tuple[str, float], float] = {}

    def note_started(self, agent: str) -> None:
        """A run was accepted by ``agent``: it counts as running there until its next heartbeat."""
        self.sent[agent] = self.sent.get(agent, 0) + 1

    def get(self, agent: str) -> Heartbeat | None:
        """The latest heartbeat seen from ``agent`` (None if it is not live)."""
        return self._agents.get(agent)

    def could_run(self, spec: JobSpec, agent: str) -> bool:
        """Is ``agent`` one the job targets (by name, or by its tags/pools as last seen)?

        ``none`` is the master's own record of a run that reached no agent. Retries and chains
        follow only such runs: an agent may publish events of any job under its own name.
        """
        if agent == NO_AGENT or agent in spec.targets.agents or ALL_AGENTS in spec.targets.agents:
            return True
        seen = self.get(agent) or self.last_seen.get(agent, (None, 0.0))[0]
        return seen is not None and identity_of(seen).takes(spec.group, spec.targets)

    async def took(self, spec: JobSpec, agent: str, run_id: str) -> bool:
        """``could_run``, or ``agent`` took ``run_id`` from a pool of the job through its queue
        group: the run's pool claim proves it (only a credential of the pool writes it), also
        while this master has not read the agent's membership key yet (its heartbeat then names
        no pool here); or ``agent`` is a member of one of the job's pools after all: another
        master, whose reading of its key is newer, sent it the run by name."""
        if self.could_run(spec, agent):
            return True
        if await self.members.took_from_pool(agent, spec.targets.pools, run_id):
            return True
        for pool in spec.targets.pools:
            if await self.members.proven(agent, pool, fresh=True):
                return True
        return False

    async def live(self) -> list[Heartbeat]:
        if self._ready:
            return list(self._agents.values())
        live: list[Heartbeat] = []
        for key, entry in (await scan(self._js, subjects.AGENTS_BUCKET)).items():
            try:
                live.append(await self.members.vouch(codec.decode_heartbeat(entry.value, key)))
            except CodecError as exc:
                log.warning("ignoring agent %s: %s", key, exc)
        return live

    def saw(self, heartbeat: Heartbeat) -> None:
        """``heartbeat`` is its agent's latest as of now (every write of ``last_seen``): the
        listeners are told."""
        self.last_seen[heartbeat.agent] = (heartbeat, time.monotonic())
        for listener in self.listeners:
            try:
                listener(heartbeat)
            except Exception:  # a listener's bug must not stop the directory
                log.exception("heartbeat listener failed")

    def _note_start(self, heartbeat: Heartbeat, stored: object) -> None:
        """``stored``: when the server stored the heartbeat (a watch entry's ``created``)."""
        if not isinstance(stored, datetime):  # typed int by nats-py, a datetime in a watch
            return
        life = (heartbeat.agent, heartbeat.started_at)
        start = stored.timestamp() - max(0.0, heartbeat.sent_at - heartbeat.started_at)
        known = self.life_starts.get(life)
        if known is None and len(self.life_starts) >= LIFE_STARTS:
            self.life_starts.pop(next(iter(self.life_starts)))  # the oldest life noted
        self.life_starts[life] = start if known is None else min(known, start)

    async def watch(self) -> None:
        kv = await self._js.key_value(subjects.AGENTS_BUCKET)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                self._ready = True
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._agents.pop(entry.key, None)
                continue
            try:
                heartbeat = codec.decode_heartbeat(entry.value, entry.key)
                self._note_start(heartbeat, entry.created)
                self._agents[entry.key] = await self.members.vouch(heartbeat)
                self.sent.pop(entry.key, None)  # the agent's own figures now include those runs
                self.incompatible.pop(entry.key, None)
                self.saw(self._agents[entry.key])
            except VersionError as exc:
                log.warning("agent %s is incompatible: %s", entry.key, exc)
                self.incompatible[entry.key] = f"incompatible: {exc}"
                self._agents.pop(entry.key, None)
            except CodecError as exc:
                quiet.log(logging.WARNING, f"bad {entry.key}", "ignoring agent %s: %s", entry.key, exc)
                self._agents.pop(entry.key, None)
