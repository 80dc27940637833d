"""Lost agents (what InTrust calls closing the sessions of an unresponsive server).

A leader duty. An agent whose last heartbeat arrived more than ``unresponsive_after``
seconds ago (this master's monotonic clock) is marked down, once. Silence is counted only
over time this master could hear: not while it was disconnected, and from a reconnect on
afresh (its heartbeat watch resumed ~11 s late after a server restart while agents were
heartbeating again within 0.5 s); not while the server did not answer a PING either, and
from its answer on afresh (a frozen server: ``hearing.py``). Before an agent is marked down
its heartbeat is read directly from the bucket: a newer one than the watch delivered means
it is alive.

- each of its runs that is queued or started and not ended (from its events since it started,
  the run ids its last heartbeat listed, the runs it accepted or claimed: ``openruns.py``) gets
  a ``lost`` event (``Nats-Msg-Id`` ``<run>.lost``, so two leaders in a row record it once);
- the overlap locks it held are released;
- a lost run of a job with ``redispatch_lost = true`` (load-balance) is started again on
  another agent of the pool (``trigger = "lost"``, ``detail.lost_run``).

An agent that restarted (a heartbeat with another start time) lost whatever its previous
life had going: once its new life had ``RESTART_SETTLE`` seconds to record its own events,
the runs the previous life left open are closed the same way (lost, their locks released,
re-dispatched if the job says so), also when it came back before it looked unresponsive;
the runs its new life recorded lost itself (its journal) are re-dispatched as well.

An agent that died while no master ran, its heartbeat expired before one came back, was
never heard by the next leader: the leader keeps each agent life it sees on record
(``roster.py``), and a new leader judges the recorded lives it does not hear as silent from
its start, and a recorded life older than the one it hears as a previous life (an agent's new
life goes on record only once its previous one is closed, so a leader stopped in between
leaves the previous one on record for the next).

An agent that comes back sends what it really did: a run it finished while cut off
publishes its final event from its outbox, which becomes the run's latest state (the run
shows ``started → lost → succeeded``): reconciled, not counted twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.claims import CARRIED_DETAIL
from natsched.errors import CodecError
from natsched.events import RunEvent, RunState
from natsched.kvscan import scan
from natsched.locking import read_holder
from natsched.master.dispatch import Dispatcher
from natsched.master.hearing import Hearing
from natsched.master.jobindex import JobIndex
from natsched.master.offers import handed
from natsched.master.openruns import AgentRuns
from natsched.master.recording import publish_event
from natsched.master.roster import AgentRoster
from natsched.models import Heartbeat
from natsched.quietlog import Throttled
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)
quiet = Throttled(log)  # an unreadable heartbeat is met on every pass: once per 10 s
UNRESPONSIVE_AFTER = 10.0
CHECK_INTERVAL = 0.5
RESTART_SETTLE = 5.0  # after an agent restarted: time for its new life's own events to land


async def starts_again(dispatcher: Dispatcher, index: JobIndex, lost: RunEvent) -> bool:
    """Will the leader start ``lost`` again: its job says so and a master of ours handed it to
    its agent (this one's reply, or the offer record every load-balance dispatch writes:
    ``offers.handed``)? The agent's heartbeat, events and claims are its own word, which a pool
    member could make up. The chains ask this too: they wait for the re-run of such a run, and
    follow the loss of any other (its offer record expired with the claims bucket's TTL, say)."""
    spec = index.jobs.get(lost.job)
    if spec is None or not spec.redispatches_lost:
        return False
    if lost.run_id in dispatcher.accepted.of(lost.agent):
        return True
    return await handed(await dispatcher.claims(), lost.run_id, lost.agent)


class LostAgents:
    def __init__(
        self,
        nc: Client,
        state: KeyValue,
        dispatcher: Dispatcher,
        index: JobIndex,
        *,
        unresponsive_after: float = UNRESPONSIVE_AFTER,
    ) -> None:
        self._js = nc.jetstream()
        self._state = state
        self._dispatcher = dispatcher
        self._index = index
        self.unresponsive_after = unresponsive_after
        # Each agent marked down, with the heartbeat it was judged on (its life, when sent): one
        # heard since (e.g. while another master led) is judged afresh when it falls silent.
        self.down: dict[str, tuple[float, float]] = {}
        # Its run() is the service's, leader or not (a standby may lead when a frozen server wakes).
        self.hearing = Hearing(nc, unresponsive_after=unresponsive_after)
        self._agents: KeyValue | None = None
        self._lives: dict[str, Heartbeat] = {}  # each agent's latest heartbeat of its current life
        self._restarted: dict[str, tuple[Heartbeat, float]] = {}  # previous life, when to close it
        self._waited_for_index = False
        self._roster = AgentRoster(self._js, state)
        # Restarts are noted as heartbeats are seen (directory.saw), also while this master stands
        # by: noted only by run() (the leader's), one that came before this master led was never
        # closed.
        dispatcher.directory.listeners.append(lambda heartbeat: self._note_life(heartbeat, time.monotonic()))
        for heartbeat, _ in list(dispatcher.directory.last_seen.values()):  # seen before we listened
            self._note_life(heartbeat, time.monotonic())
        self._runs = AgentRuns(self._js, dispatcher.accepted, dispatcher.directory.life_starts)

    async def _heard_directly(self, last: Heartbeat) -> bool:
        """True if the bucket holds a newer heartbeat than ``last`` (the watch is behind), or
        one this master cannot read, or if the bucket cannot be read now (no judgement without
        seeing)."""
        try:
            entry = await (await self._agents_kv()).get(last.agent)
            current = codec.decode_heartbeat(entry.value or b"", last.agent)
        except KeyNotFoundError:
            return False
        except CodecError as exc:
            # A newer protocol (the agent upgraded before the masters) or garbage: it was judged
            # silent and its running jobs started again elsewhere. Left alone while the value is
            # there: the bucket's TTL removes it once nobody writes it.
            quiet.log(logging.WARNING, f"unreadable {last.agent}", "agent %s not judged: %s", last.agent, exc)
            return True
        except Exception as exc:  # noqa: BLE001 - NATS away or slow: judge on a later pass
            log.info("heartbeat of %s not readable (%r): not judged now", last.agent, exc)
            return True
        if current.sent_at <= last.sent_at:
            return False
        log.info("agent %s heartbeats (the watch is behind): not lost", last.agent)
        self._dispatcher.directory.saw(current)
        return True

    async def _agents_kv(self) -> KeyValue:
        if self._agents is None:
            self._agents = await self._js.key_value(subjects.AGENTS_BUCKET)
        return self._agents

    def _judging(self) -> bool:
        """False until the job index holds the whole bucket: a lost run's job decides whether it
        is started again, and a run judged lost without it was closed and never redone (a
        leader's first pass came while its index still read 100k definitions)."""
        if self._index.ready.is_set():
            return True
        if not self._waited_for_index:
            log.info("lost agents are judged once the job index is loaded")
            self._waited_for_index = True
        return False

    async def run(self) -> None:
        directory = self._dispatcher.directory
        recalled = False  # this leadership's own: the lives on record are read when it starts
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            if not self.hearing.hears():
                continue
            now = time.monotonic()
            judging = self._judging()
            recalled = recalled or (judging and await self._recall())
            if not (judging and recalled):
                continue  # restarts are still noted meanwhile (the directory tells _note_life)
            for heartbeat, seen_at in list(directory.last_seen.values()):
                await self._judge(heartbeat, now - max(seen_at, self.hearing.since))
            await self._close_previous_lives(now)

    async def _judge(self, heartbeat: Heartbeat, silent: float) -> None:
        agent = heartbeat.agent
        # A new life goes on record once the previous one is closed: written over it at once, a
        # leader stopped in the settle time left a record that named only the new life, and
        # the next leader never closed (nor re-dispatched) what the previous one had going.
        if agent not in self.down and agent not in self._restarted and not self._roster.recorded(heartbeat):
            try:
                await self._roster.record(heartbeat)
            except Exception as exc:  # noqa: BLE001 - written on a later pass
                log.info("life of agent %s not recorded yet: %r", agent, exc)
        if silent <= self.unresponsive_after:
            if self.down.pop(agent, None) is not None:
                log.info("agent %s is back", agent)
            return
        # Down as judged on this very heartbeat: done. Down on an older one: it came back and
        # fell silent again unseen here (another master led meanwhile): its new runs stayed open.
        judged = (heartbeat.started_at, heartbeat.sent_at)
        if self.down.get(agent) == judged or await self._heard_directly(heartbeat):
            return
        self.down[agent] = judged
        try:
            await self.mark_lost(heartbeat, silent)
        except Exception:  # noqa: BLE001 - tried again on the next pass
            log.exception("could not close the runs of lost agent %s", agent)
            self.down.pop(agent, None)
            return
        await self._roster.forget(heartbeat)

    async def _recall(self) -> bool:
        """The agent lives earlier leaders saw and this master does not hear (the agent died and
        its heartbeat expired while no master ran) join the judged ones, silent from now on.
        False while the record cannot be read (asked again on the next pass)."""
        try:
            lives = await self._roster.lives()
        except Exception as exc:  # noqa: BLE001 - NATS away or slow: nobody is judged before it
            log.warning("agent lives on record not readable (%r): lost agents not judged yet", exc)
            return False
        last_seen = self._dispatcher.directory.last_seen
        for agent, life in lives.items():
            heard = last_seen.get(agent)
            if heard is None:
                log.info("agent %s: a life on record this master has not heard", agent)
                self._dispatcher.directory.saw(life)
            elif heard[0].started_at > life.started_at and agent not in self._restarted:
                # It restarted while no leader watched: that life is closed as any previous one.
                self._restarted[agent] = (life, time.monotonic() + RESTART_SETTLE)
        return True

    def _note_life(self, heartbeat: Heartbeat, now: float) -> None:
        """A heartbeat with another start time: the agent restarted, so whatever its previous
        life left open is over (its processes died with it). Closed once the new life had
        time to record its own events (its journal closes what it knew, see agent/recovery.py)."""
        known = self._lives.get(heartbeat.agent)
        self._lives[heartbeat.agent] = heartbeat
        if (
            known is not None
            and known.started_at != heartbeat.started_at
            and heartbeat.agent not in self._restarted
        ):
            self._restarted[heartbeat.agent] = (known, now + RESTART_SETTLE)

    async def _close_previous_lives(self, now: float) -> None:
        for agent, (previous, due) in list(self._restarted.items()):
            if now < due:
                continue
            del self._restarted[agent]
            try:
                await self.close_previous_life(previous, self._lives[agent].started_at)
            except Exception:  # noqa: BLE001 - tried again later
                log.exception("could not close the runs of the previous life of agent %s", agent)
                self._restarted[agent] = (previous, now + RESTART_SETTLE)

    async def close_previous_life(self, previous: Heartbeat, restarted_at: float) -> None:
        agent = previous.agent
        history = await self._runs.history(previous)
        open_runs = await self._runs.still_open(previous, history, before=restarted_at)
        if open_runs:
            reason = f"agent {agent} restarted while the run was going (its processes ended with it)"
            log.warning("%s: closing %d run(s) of its previous life", reason, len(open_runs))
            await self._close(open_runs, reason, agent, only=set(open_runs))
        # Runs of the previous life the new one recorded lost itself (its journal, within the
        # settle time): closed, but a redispatch_lost job's run was never started again. Sent
        # with the same run id as any earlier re-dispatch of it: one that was is not run twice.
        for run_id, event in history.latest.items():
            if (
                event.state is RunState.LOST
                and history.first[run_id] < restarted_at
                and self._redispatches(event)
            ):
                await self._redispatch(event)

    async def mark_lost(self, heartbeat: Heartbeat, silent: float) -> None:
        agent = heartbeat.agent
        reason = f"agent {agent} unresponsive for {silent:.0f}s (no heartbeat)"
        log.warning("%s: closing its runs", reason)
        open_runs = await self._runs.still_open(heartbeat, await self._runs.history(heartbeat))
        await self._close(open_runs, reason, agent)

    async def _close(
        self, open_runs: dict[str, RunEvent], reason: str, agent: str, only: set[str] | None = None
    ) -> None:
        """Record the runs lost, release their (or, ``only`` None, all the agent's) locks, redo.

        A run to start again is recorded lost only after it was re-dispatched: a leader that dies
        (or whose dispatch raises) in between leaves it open, so the next pass, or the next
        leader, re-dispatches it (the same run id: recognised, not run twice). Recorded first, it
        was final, and nobody started it again."""
        redo = {run_id: e for run_id, e in open_runs.items() if self._redispatches(e)}
        for run_id, event in open_runs.items():
            if run_id not in redo:
                await publish_event(self._js, event.moved_to(RunState.LOST, reason=reason))
        await self._release_locks(agent, only)
        for event in redo.values():
            await self._redispatch(event)
            await publish_event(self._js, event.moved_to(RunState.LOST, reason=reason))

    def _redispatches(self, lost: RunEvent) -> bool:
        spec = self._index.jobs.get(lost.job)
        return spec is not None and spec.redispatches_lost

    async def _release_locks(self, agent: str, runs: set[str] | None = None) -> None:
        for key, value in (await scan(self._js, subjects.STATE_BUCKET, subjects.LOCKS)).items():
            holder = read_holder(value.value)
            if holder.agent == agent and (runs is None or holder.run_id in runs):
                try:
                    await self._state.delete(key, last=value.revision)
                    log.info("released %s held by lost agent %s", key, agent)
                except Exception as exc:  # noqa: BLE001 - changed meanwhile: not ours to release
                    log.debug("lock %s changed: %r", key, exc)

    async def _redispatch(self, lost: RunEvent) -> None:
        spec = self._index.jobs.get(lost.job)
        if spec is None or not self._redispatches(lost):
            return
        if not await starts_again(self._dispatcher, self._index, lost):
            # The agent's own heartbeat, events and claims name the runs going on there: an agent
            # (even a member of the job's pool) could list made-up runs and go silent to have
            # them started elsewhere.
            log.warning(
                "lost run %s of %s not started again: no master of ours handed it to %s",
                lost.run_id,
                lost.job,
                lost.agent,
            )
            return
        replies = await self._dispatcher.dispatch(
            spec,
            trigger=RunTrigger.LOST,
            scheduled_at=lost.scheduled_at,
            attempt=lost.attempt,
            avoid_agents=[lost.agent],
            detail={
                **{k: v for k, v in lost.detail.items() if k in CARRIED_DETAIL},
                "lost_run": lost.run_id,
            },
            base_id=f"{lost.run_id}-re",  # a second leader re-dispatching it is recognised by the agent
        )
        for reply in replies:
            log.info(
                "lost run %s of %s re-dispatched: %s on %s",
                lost.run_id,
                lost.job,
                "started" if reply.ok else reply.reason,
                reply.agent or "-",
            )
