"""The master service: owns the buckets, serves the admin API.

Later parts (scheduler, dispatch, chains, leader lease) hang off this service; for now
it makes sure every bucket and stream exists and answers ``natsched.api.>`` in the
``natsched-master`` queue group, so several masters can serve the API side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.buckets import StorageSettings, ensure_all
from natsched.claims import open_claims
from natsched.connection import close_quietly, connect, dropped_for_its_reply, subscribe_inbound
from natsched.master.api import AdminApi
from natsched.master.chains import ChainFollower
from natsched.master.dispatch import Dispatcher
from natsched.master.external import TriggerHandler
from natsched.master.holding import HeldRun, Holding
from natsched.master.inbound import SubjectTriggers
from natsched.master.jobindex import JobIndex
from natsched.master.lease import DEFAULT_TTL, LeaderLease
from natsched.master.locks import LockService
from natsched.master.lost import UNRESPONSIVE_AFTER, LostAgents
from natsched.master.notify import Notifier
from natsched.master.offers import keep_offers
from natsched.master.putback import SecretsKept
from natsched.master.recording import record_unsent
from natsched.master.replies import KvUpdates
from natsched.master.retries import RetryFollower
from natsched.master.scheduler import Due, MasterScheduler
from natsched.master.secrets_api import SecretsApi
from natsched.master.slotaudit import SlotAudit
from natsched.senders import SmtpSettings
from natsched.service import Service
from natsched.settings import ConnectionSettings
from natsched.subjects import SECRETS_BUCKET

if TYPE_CHECKING:
    from natsched.metrics import Metrics

log = logging.getLogger(__name__)
DRAIN_TIMEOUT = 2.0  # SIGTERM to exit within 3 s, connected or not
# Claimed slots being dispatched at once: a window's worth for two agents (window.py); the
# claims of a larger burst wait for room, so they keep pace with what the agents take.
DISPATCHING = 512
RELEASE_TIMEOUT = 0.5
STATUS_WAIT = 0.5  # a standby's wait for a leader's answer before it takes an unreadable lease


def new_master_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class MasterService(Service):
    """``async with MasterService(settings) as master: await master.run_forever()``."""

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        storage: StorageSettings | None = None,
        master_id: str | None = None,
        clock: Callable[[], float] = time.time,
        lease_ttl: float = DEFAULT_TTL,
        unresponsive_after: float = UNRESPONSIVE_AFTER,
        secret_key: bytes | None = None,
        smtp: SmtpSettings | None = None,
        metrics_port: int | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings.with_name("natsched-master").with_inbox(subjects.MASTER_INBOX)
        self.storage = storage or StorageSettings()
        self.master_id = master_id or new_master_id()
        self.nc: Client | None = None
        # What others may flood (API, triggers, lock requests, status) arrives on a connection of
        # its own: nats-server may cut it as a slow consumer, never the lease's and dispatch's.
        self.requests_nc: Client | None = None
        self.dispatcher: Dispatcher | None = None
        self.scheduler: MasterScheduler | None = None
        self.retries: RetryFollower | None = None
        self.triggers: TriggerHandler | None = None
        self.api: AdminApi | None = None
        self.locks: LockService | None = None
        self.index: JobIndex | None = None
        self.chains: ChainFollower | None = None
        self.inbound: SubjectTriggers | None = None
        self.holding: Holding | None = None
        self.lease: LeaderLease | None = None
        self.lost: LostAgents | None = None
        self._clock = clock
        self._lease_ttl = lease_ttl
        self._unresponsive_after = unresponsive_after
        self._leader_task: asyncio.Task[None] | None = None
        self._dispatching = asyncio.Semaphore(DISPATCHING)
        self._secret_key = secret_key
        self._smtp = smtp
        self.notifier: Notifier | None = None
        self._metrics_port = metrics_port
        self.metrics: Metrics | None = None

    async def start(self) -> None:
        log.info("master %s connecting to %s", self.master_id, self.settings.describe())
        self.nc = await connect(self.settings, forever=True, on_closed=self.connection_closed)
        self.watch_connection(self.nc)
        requests = self.settings.with_name(f"{self.settings.name}-requests")
        self.requests_nc = await connect(
            requests, forever=True, on_closed=self.connection_closed, second=True
        )
        self.watch_connection(self.requests_nc)
        js = self.nc.jetstream()
        await ensure_all(js, self.storage)
        jobs = await js.key_value(subjects.JOBS_BUCKET)
        state = await js.key_value(subjects.STATE_BUCKET)
        self.lease = LeaderLease(
            state, self.master_id, ttl=self._lease_ttl, another_leads=self._another_leads
        )
        self.dispatcher = Dispatcher(self.nc, master_id=self.master_id, lease=self.lease)
        self.index = JobIndex(jobs)
        self.keep_running(self.index.watch, name="job-index")
        self.keep_running(self.index.restore, name="job-restore")
        if self._secret_key is not None:
            secrets = SecretsKept(await js.key_value(SECRETS_BUCKET), self._secret_key)
            self.keep_running(secrets.watch, name="secrets-kept")
        await self._serve_requests(js, jobs)
        await self._follow_events(js, state)
        self.lost = LostAgents(
            self.nc, state, self.dispatcher, self.index, unresponsive_after=self._unresponsive_after
        )
        self.keep_running(self.lost.hearing.run, name="hearing")
        self.keep_running(self.dispatcher.directory.watch, name="agent-directory")
        self.locks = LockService(
            self.nc,
            state,
            await js.key_value(subjects.AGENTS_BUCKET),
            index=self.index,
            members=self.dispatcher.directory.members,
            claims=await open_claims(js),
        )
        await self.locks.start(self.requests_nc)
        await subscribe_inbound(self.requests_nc, subjects.MASTERS_STATUS, cb=self._status)
        self.spawn(self._follow_leadership(state), name="leadership", critical=True)
        self.spawn(self.lease.run(), name="leader-lease", critical=True)
        log.info("master %s serving %s", self.master_id, subjects.API_ALL)

    async def _serve_requests(self, js: JetStreamContext, jobs: KeyValue) -> None:
        """The admin API and the trigger subject, in queue groups shared by every master."""
        assert self.nc is not None and self.index is not None and self.dispatcher is not None
        assert self.requests_nc is not None
        api = self.api = AdminApi(
            js=js,
            jobs=jobs,
            agents=await js.key_value(subjects.AGENTS_BUCKET),
            master_id=self.master_id,
            nc=self.nc,
            settings=await js.key_value(subjects.SETTINGS_BUCKET),
            index=self.index,
            secrets=SecretsApi(await js.key_value(SECRETS_BUCKET), self._secret_key),
            vouch=self.dispatcher.directory.members.vouch,
        )
        await subscribe_inbound(self.requests_nc, subjects.API_ALL, queue=subjects.API_QUEUE, cb=api.serve)
        self.triggers = TriggerHandler(self.nc, self.index, self.dispatcher, replies=self.requests_nc)
        await subscribe_inbound(
            self.requests_nc, subjects.TRIGGER_ALL, queue=subjects.TRIGGER_QUEUE, cb=self.triggers.handle
        )

    async def _follow_events(self, js: JetStreamContext, state: KeyValue) -> None:
        """Retries, calendars and pauses, chains, notifications and subject triggers."""
        assert self.nc is not None and self.index is not None and self.dispatcher is not None
        self.retries = RetryFollower(self.nc, self.index, state, self.dispatcher)
        await self.retries.start()
        self.holding = Holding(
            await js.key_value(subjects.SETTINGS_BUCKET),
            state,
            js,
            self.dispatcher,
            self.index,
            clock=self._clock,
        )
        self.keep_running(self.holding.watch, name="settings-watch")
        self.chains = ChainFollower(
            self.nc, await js.key_value(subjects.CHAINS_BUCKET), self.index, self.dispatcher, self.holding
        )
        await self.chains.start()
        self.keep_running(self.chains.fanins.watch, name="fan-in-watch")
        self.notifier = Notifier(
            self.nc,
            self.index,
            self._smtp,
            groups=self.holding.groups.get,
            could_run=self.dispatcher.directory.could_run,
        )
        await self.notifier.start()
        for follower in (self.retries.following, self.chains.following, self.notifier.following):
            assert follower is not None
            self.spawn(follower.run(), name=f"{follower.durable}-acks", critical=True)
        if self._metrics_port is not None:
            self._start_metrics(self._metrics_port)
        self.inbound = SubjectTriggers(
            self.nc,
            self.index,
            self.dispatcher,
            self.holding,
            replicas=self.storage.replicas,
            live_nc=self.requests_nc,
        )
        await self.inbound.start()
        assert self.inbound.following is not None
        self.spawn(self.inbound.following.run(), name="subject-trigger-acks", critical=True)
        self.keep_running(self.inbound.run, name="subject-triggers")

    def _start_metrics(self, port: int) -> None:
        assert self.notifier is not None and self.dispatcher is not None
        from natsched.metrics import Metrics  # prometheus-client only when asked for

        metrics = self.metrics = Metrics("master")
        self.notifier.on_event = lambda event: metrics.runs.labels(state=event.state.value).inc()
        self.dispatcher.on_dispatch = metrics.dispatch.observe
        self.spawn(self._heartbeat_ages(metrics), name="metrics-heartbeat-ages")
        metrics.serve(port)

    async def _heartbeat_ages(self, metrics: Metrics) -> None:
        assert self.dispatcher is not None
        while True:
            now = time.monotonic()
            for agent, (_, seen_at) in list(self.dispatcher.directory.last_seen.items()):
                metrics.heartbeat_age.labels(agent=agent).set(now - seen_at)
            await asyncio.sleep(1.0)

    async def _follow_leadership(self, state: KeyValue) -> None:
        """Run the leader's duties while this master holds the lease, and only then."""
        assert self.lease is not None
        while True:
            await self.lease.changed.wait()
            self.lease.changed.clear()
            leading = self.lease.is_leader.is_set()
            if leading and self._leader_task is None:
                self._leader_task = self.keep_running(lambda: self._lead(state), name="leader-duties")
            elif not leading and self._leader_task is not None:
                self._leader_task.cancel()
                self._leader_task = None
                self.scheduler = None

    async def _lead(self, state: KeyValue) -> None:
        """A fresh scheduler each time: it reloads the cursors the previous leader advanced,
        so the slots of the gap follow each job's misfire policy."""
        assert self.lease is not None and self.chains is not None and self.lost is not None
        assert self.index is not None and self.holding is not None and self.nc is not None
        assert self.dispatcher is not None
        if not self.lease.is_leader.is_set():
            # Started again by keep_running after a step-down whose cancellation Python 3.11's
            # TaskGroup turned into the errors of the duties below (see JobSync.stopping).
            return
        self.scheduler = MasterScheduler(
            self.index,
            state,
            self._fire,
            clock=self._clock,
            may_claim=self.lease.held,
            lease_decided=self.lease.decided,
            js=self.nc.jetstream(),
            master_id=self.master_id,
            update=KvUpdates(self.dispatcher.requests, subjects.STATE_BUCKET).update,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scheduler.run())
            audit = SlotAudit(self.nc.jetstream(), self.scheduler.cursors, could_run=self.could_run_job)
            group.create_task(audit.run())
            group.create_task(self.chains.fanins.expire())
            group.create_task(self.lost.run())
            group.create_task(self.holding.release_lifted())
            every = self.storage.claims_max_age / 4
            group.create_task(keep_offers(self.dispatcher.claims, self._handed_runs, every))

    async def _another_leads(self) -> bool:
        """Does another master say it leads, with a fresh lease (``natsched.masters.status``)?"""
        assert self.nc is not None and self.lease is not None
        inbox = self.nc.new_inbox()
        fresh = asyncio.Event()
        ttl = self.lease.ttl

        async def on_answer(msg: Msg) -> None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                answer = json.loads(msg.data)
                age = answer.get("lease_age")
                others = answer.get("master") != self.master_id and answer.get("leader")
                if others and age is not None and float(age) < ttl:
                    fresh.set()

        sub = await self.nc.subscribe(inbox, cb=on_answer)
        try:
            await self.nc.publish(subjects.MASTERS_STATUS, b"{}", reply=inbox)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_WAIT):
                    await fresh.wait()
        finally:
            await sub.unsubscribe()
        return fresh.is_set()

    def could_run_job(self, job: str, agent: str) -> bool:
        """May ``agent`` run ``job`` (a target of it, or the masters' own record)?"""
        assert self.index is not None and self.dispatcher is not None
        spec = self.index.jobs.get(job)
        return spec is not None and self.dispatcher.directory.could_run(spec, agent)

    async def _status(self, msg: Msg) -> None:
        """``natsched.masters.status``: every master answers (no queue group)."""
        assert self.lease is not None
        if msg.reply and not dropped_for_its_reply(msg):
            await msg.respond(
                codec.to_json(
                    {
                        "master": self.master_id,
                        "leader": self.lease.held(),
                        "term": self.lease.term,
                        "leader_id": self.lease.leader,
                        "lease_age": self.lease.age(),
                        "lease_ttl": self.lease.ttl,
                        "server": _server_of(self.nc),
                        "unproven": self._unproven(),
                    }
                )
            )

    async def _handed_runs(self) -> list[tuple[str, str]]:
        """(run id, agent) of the runs live agents list as running, of jobs that start a lost
        run again (their offer records are kept: offers.keep_offers)."""
        assert self.dispatcher is not None and self.index is not None
        jobs = self.index.jobs
        return [
            (run_id, hb.agent)
            for hb in await self.dispatcher.live_agents()
            for run_id, job in hb.runs.items()
            if (spec := jobs.get(job)) is not None and spec.redispatches_lost
        ]

    def _unproven(self) -> dict[str, list[str]]:
        """Each live agent's pools and tags its heartbeat names and its key does not prove
        (runs aimed at them do not go there: members.py)."""
        if self.dispatcher is None:
            return {}
        directory = self.dispatcher.directory
        unproven = directory.members.unproven
        return {agent: list(unproven[agent]) for agent in sorted(unproven) if directory.get(agent)}

    async def _fire(self, due: Due) -> None:
        """A claimed slot: dispatched in a task the service owns. The scheduler never waits on
        agents, only for room when ``DISPATCHING`` slots are out already (a burst of 10,000)."""
        await self._dispatching.acquire()
        task = self.spawn(self._dispatch(due), name="dispatch-slot")
        task.add_done_callback(lambda _: self._dispatching.release())

    async def _dispatch(self, due: Due) -> None:
        assert self.holding is not None and self.nc is not None
        try:
            if await self.holding.admit(due.spec, HeldRun(trigger=due.trigger, scheduled_at=due.slot)):
                await self._dispatch_now(due)
        except Exception as exc:  # noqa: BLE001 - NATS trouble mid-dispatch: the slot is ours to record
            log.error("%s slot %s: dispatch failed: %r", due.spec.key, due.slot, exc)
            await record_unsent(
                self.nc.jetstream(), job=due.spec.key, trigger=due.trigger, scheduled_at=due.slot, error=exc
            )
        if self.scheduler is not None:  # its outcome is on record: the cursor need not carry it on
            self.scheduler.cursors.sent(due.spec.key, due.slot)

    async def _dispatch_now(self, due: Due) -> None:
        assert self.dispatcher is not None
        if self.metrics is not None:
            self.metrics.lateness.observe(max(0.0, self._clock() - due.slot))
        replies = await self.dispatcher.dispatch(due.spec, trigger=due.trigger, scheduled_at=due.slot)
        for reply in replies:
            if not reply.ok:
                log.warning("%s slot %s: %s on %s", due.spec.key, due.slot, reply.reason, reply.agent or "-")

    async def warmed_up(self) -> None:
        assert self.index is not None  # made by start()
        await self.index.ready.wait()

    async def stop(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.lease is not None and self.nc is not None and self.nc.is_connected:
            # A standby takes over now, not after the lease expires; cut off, it cannot be told.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    await self.lease.release()
        if self.triggers is not None:
            await self.triggers.close()
        if self.api is not None:
            await self.api.close()
        if self.locks is not None:
            await self.locks.close()
        if self.inbound is not None:
            await self.inbound.close()
        await close_quietly(self.requests_nc, DRAIN_TIMEOUT, drain=False)
        await close_quietly(self.nc, DRAIN_TIMEOUT)


def _server_of(nc: Client | None) -> str:
    """host:port of the server this master is connected to now ('' when none)."""
    url = nc.connected_url if nc is not None and nc.is_connected else None
    return url.netloc if url is not None else ""
