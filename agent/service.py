"""The agent service: cache first, then NATS.

Start-up never waits for NATS: the cache is opened, the mirror scheduler starts firing
from it, and a background task connects (retrying forever). Once connected, the agent
syncs definitions, publishes its heartbeat and drains its event outbox. So an agent
started while NATS is down still has, and runs, its jobs.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from agent.cache import JobCache
from agent.config import AgentConfig
from agent.credential import CredentialWatch
from agent.executor import JobExecutor
from agent.files import FileWatcher
from agent.fileversions import FileVersions
from agent.groups import GroupTable
from agent.guardian import Guardian
from agent.heartbeat import HeartbeatPublisher, MembershipProof, sample_load
from agent.holds import HoldsSync
from agent.journal import RunJournal
from agent.localjobs import LocalJobs
from agent.locks import ClusterLocks
from agent.mirror import MirrorScheduler
from agent.nameguard import NameGate
from agent.outbox import EventOutbox
from agent.output import LogStreamer
from agent.recovery import Recovery
from agent.responder import Responder
from agent.runner import ProcessRunner
from agent.secretstore import SecretStore
from agent.sync import JobSync
from agent.syncnotify import SyncNotifier
from natsched import subjects
from natsched.connection import close_quietly, connect
from natsched.errors import ConfigError, NotConnectedError
from natsched.models import Heartbeat
from natsched.secrets import load_key
from natsched.service import Service
from natsched.settings import ConnectionSettings

if TYPE_CHECKING:
    from natsched.metrics import Metrics

log = logging.getLogger(__name__)
MAX_REPORTED_RUNS = 1000  # run ids in a heartbeat (what the leader marks lost if this agent dies)
JOURNAL_FILE = "runs.sqlite"  # the run journal, beside the cache
FILES_FILE = "files.sqlite"  # file versions the file-triggered jobs ran for, beside the cache
FLUSH_TIMEOUT = 5.0  # at shutdown: events not acknowledged by then stay in the SQLite outbox
# Stopping because another agent took the name: how long its events may wait for NATS (back).
TAKEN_DELIVERY = 10.0


class AgentService(Service):
    """``async with AgentService(config, settings) as agent: await agent.run_forever()``."""

    def __init__(self, config: AgentConfig, settings: ConnectionSettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings.with_name(f"natsched-agent-{config.name}").with_inbox(
            subjects.agent_inbox(config.name)
        )
        self.groups = GroupTable(config.tags)  # replicated group settings (natsched_settings group.<group>)
        self.cache = JobCache(config.cache_path, self.groups.replication)
        self.local: LocalJobs | None = None
        self.nc: Client | None = None
        self.sync: JobSync | None = None
        self.connected = asyncio.Event()
        self.started_at = time.time()
        self.connected_since = 0.0
        self._stopping = False
        self.outbox: EventOutbox | None = None
        self.journal: RunJournal | None = None
        self.recovery: Recovery | None = None
        self.guardian = Guardian()  # job processes die with this agent, even on kill -9
        self.logs = LogStreamer(config.name)
        self.executor: JobExecutor | None = None
        self.mirror: MirrorScheduler | None = None
        self.files: FileWatcher | None = None
        self.file_versions: FileVersions | None = None
        self.responder: Responder | None = None
        self.credential = CredentialWatch(config.name, config.pools)
        # The mirror runs nothing on a name taken over while it was frozen or stopped.
        self.name_gate = NameGate(hold_start=True)
        self.sync_notifier = SyncNotifier(
            config.name, config.sync_targets(), config.sync_notify_on, config.smtp(), lambda: self.nc
        )
        self.holds: HoldsSync
        self.heartbeat: HeartbeatPublisher | None = None
        self.metrics: Metrics | None = None

    @property
    def running(self) -> int:
        return self.executor.running if self.executor else 0

    async def start(self) -> None:
        try:
            await self.cache.open()
        except (OSError, sqlite3.Error) as exc:
            # One line and exit 1 (systemd restarts it), not a traceback: a state dir that is
            # a file, on a read-only file system, or not the agent user's.
            raise ConfigError(f"state dir {self.config.state_dir} is not usable: {exc}") from None
        log.info(
            "agent %s: %d jobs in cache %s",
            self.config.name,
            await self.cache.count(),
            self.config.cache_path,
        )
        self.outbox = EventOutbox(self.cache.db)
        await self.outbox.open()
        self.journal = RunJournal(self.config.cache_path.with_name(JOURNAL_FILE))
        left = await self.journal.open()
        self.guardian.start()
        self.holds = HoldsSync(self.cache.db)
        self.holds.on_entries.append(self.groups.update)
        await self.holds.load()
        key = load_key(self.config.secret_key_file) if self.config.secret_key_file else None
        self.executor = JobExecutor(
            agent=self.config.name,
            runner=ProcessRunner(guardian=self.guardian),
            outbox=self.outbox,
            logs=self.logs,
            kill_grace=self.config.kill_grace,
            journal=self.journal,
            max_queued=self.config.max_queued,
            secrets=SecretStore(key),
            holds=lambda: self.holds.holds,
            group_settings=self.groups.of,
        )
        self.holds.listeners.append(lambda _lifted: self._release_held())
        self.recovery = Recovery(left, self.executor)
        await self.recovery.at_start()
        self.mirror = MirrorScheduler(self.cache, self.executor, gate=self.name_gate)
        if self.config.metrics_port is not None:
            self._serve_metrics(self.config.metrics_port, self.outbox, self.mirror)
        self.file_versions = FileVersions(self.config.cache_path.with_name(FILES_FILE))
        self.file_versions.open()
        self.files = FileWatcher(self.cache, self.executor, self.file_versions)
        self.local = LocalJobs(
            self.cache,
            self.config.jobs_dir,
            agent=self.config.name,
            replication=self.groups.replication,
            interval=self.config.local_scan_interval,
        )
        await self.local.load()
        await self.local.scan()  # before the mirror starts: local jobs run without NATS
        self.local.listeners += [self.mirror.on_change, self.files.on_change]
        self.groups.listeners.append(self.local.group_changed)
        self.spawn(self.local.run(), name="local-jobs", critical=True)
        self.spawn(self.mirror.run(), name="mirror-scheduler", critical=True)
        self.spawn(self.files.run(), name="file-triggers", critical=True)
        self.spawn(self.outbox.run(), name="event-outbox", critical=True)
        self.spawn(self.journal.run(), name="run-journal", critical=True)
        self.spawn(self.sync_notifier.run(), name="sync-notify", critical=True)
        self.spawn(self._connect_and_serve(), name="agent-connection", critical=True)
        self.spawn(self._guard_credential(), name="credential-watch", critical=True)

    def _serve_metrics(self, port: int, outbox: EventOutbox, mirror: MirrorScheduler) -> None:
        from natsched.metrics import Metrics  # prometheus-client only when asked for

        self.metrics = metrics = Metrics("agent")
        outbox.on_event = lambda event: self.metrics_runs(event.state.value)
        mirror.on_late = metrics.lateness.observe
        metrics.outbox_depth.set_function(lambda: float(outbox.depth))
        metrics.serve(port)

    async def warmed_up(self) -> None:
        await self.connected.wait()
        assert self.sync is not None  # set before connected
        await self.sync.synced.wait()

    def stop_allowance(self) -> float:
        # Running jobs get shutdown_grace, then SIGTERM and kill_grace, then the reaping and the
        # final events (the executor waits grace + kill_grace + 5 s for them).
        return self.config.shutdown_grace + self.config.kill_grace + 5

    async def stop(self) -> None:
        self._stopping = True
        if self.metrics is not None:
            self.metrics.close()
        if self.responder is not None:
            await self.responder.stop()  # stop accepting work first
        if self.mirror is not None:
            # A step under way (cursor committed, slot claimed) finishes: it writes to the cache,
            # and the run of the slot it claimed is started, not lost.
            await self.mirror.core.settle(FLUSH_TIMEOUT)
        if self.executor is not None:
            # Runs get the grace period to finish; their final events still go out (or to the outbox).
            await self.executor.shutdown(self.config.shutdown_grace)
        if self.name_gate.taken and self.mirror is not None:
            await self.mirror.skip_missed(FLUSH_TIMEOUT)  # recorded before the outbox's last flush
        if self.outbox is not None and self.name_gate.taken and self.outbox.attached:
            # The name was taken over: this state dir may never run again, so what it recorded
            # (the slots it skipped, its last runs' ends) goes out now, waiting (bounded) for
            # NATS too if it went away meanwhile; else it stays here unseen. (Not an agent
            # refused at start: it never published, and nothing it could wait for comes.)
            if not await self.outbox.deliver(TAKEN_DELIVERY):
                log.error(
                    "%d event(s) not published within %gs; they stay in the outbox of %s",
                    self.outbox.depth,
                    TAKEN_DELIVERY,
                    self.config.cache_path,
                )
        elif self.outbox is not None:
            # Cut off from NATS, waiting changes nothing: the events stay in the SQLite outbox.
            connected = self.nc is not None and self.nc.is_connected
            await self.outbox.flush(FLUSH_TIMEOUT if connected else 0)
        if self.journal is not None:
            self.journal.close()
        if self.file_versions is not None:
            self.file_versions.close()
        if self.heartbeat is not None and self.nc is not None and self.nc.is_connected:
            await self.heartbeat.withdraw(FLUSH_TIMEOUT)
        await self.guardian.close()
        await close_quietly(self.nc, FLUSH_TIMEOUT)
        await self.cache.close()

    async def synced(self, timeout: float) -> None:
        """Wait until connected and caught up with the bucket (for tests and `up`)."""
        async with asyncio.timeout(timeout):
            await self.connected.wait()
            assert self.sync is not None
            await self.sync.synced.wait()

    async def _on_reconnect(self) -> None:
        log.info("agent %s reconnected to NATS", self.config.name)
        self.name_gate.set_connected(True)
        self.connected_since = time.time()
        if self.outbox is not None and self.nc is not None:
            self.outbox.attach(self.nc)

    async def _on_disconnect(self) -> None:
        self.name_gate.set_connected(False)
        if self._stopping:
            return
        log.warning("agent %s lost NATS; running from cache", self.config.name)

    async def _on_connection_error(self, exc: Exception) -> None:
        self.name_gate.unreachable()  # before a first heartbeat: run from the cache now
        await self.credential.on_error(exc)

    async def _connect_and_serve(self) -> None:
        log.info("agent %s connecting to %s", self.config.name, self.settings.describe())
        self.nc = await connect(
            self.settings,
            forever=True,
            on_reconnect=self._on_reconnect,
            on_disconnect=self._on_disconnect,
            on_error=self._on_connection_error,
            on_closed=self.connection_closed,
        )
        self.connected_since = time.time()
        self.name_gate.set_connected(True)
        self.watch_connection(self.nc)
        js = self.nc.jetstream()
        heartbeat = HeartbeatPublisher(
            js, build=self._heartbeat, interval=self.config.heartbeat_interval, gate=self.name_gate
        )
        self.heartbeat = heartbeat
        pools = MembershipProof(js, self.config.name, self.config.pools, self.config.tags)
        await pools.once()  # before the heartbeat names the pools and tags: a master checks them then
        await heartbeat.take_name()  # before anything else: one agent per name
        self.logs.nc = self.nc
        assert self.outbox is not None and self.mirror is not None
        self.outbox.attach(self.nc)
        self.sync = self._job_sync(js)
        assert self.executor is not None
        self.executor.locks = ClusterLocks(self.nc, self.config.name)
        if self.recovery is not None:  # lock requests go to a master: not in the way of starting
            self.spawn(self.recovery.once_connected(self.executor.locks), name="recovery")
        self.executor.secrets.js = js
        self.responder = Responder(
            self.nc,
            self.executor,
            agent=self.config.name,
            pools=self.config.pools,
            max_concurrency=self.config.max_concurrency,
            sync_report=self._sync_report,
            local_report=self.local.report if self.local is not None else None,
            resync=self._resync,
            gate=self.name_gate,
        )
        await self.responder.start()
        # A credential of another agent is caught here, before a heartbeat or a sync happens.
        try:
            await self.credential.settle(self.nc)
        except Exception as exc:  # noqa: BLE001 - NATS went away again: the watch still catches it later
            log.debug("flush after subscribing failed: %r", exc)
        if self.credential.fatal:
            raise ConfigError(self.credential.fatal)
        self.connected.set()
        log.info("agent %s connected", self.config.name)
        self.sync.stopping = lambda: self.stopping
        self.spawn(self.sync.run(), name="job-sync", critical=True)
        self.spawn(heartbeat.run(), name="heartbeat", critical=True)
        self.spawn(pools.run(), name="pool-membership")
        self.spawn(self.holds.run(js), name="settings-watch", critical=True)

    def _job_sync(self, js: JetStreamContext) -> JobSync:
        """Keeping the cache equal to the jobs bucket; the mirror and file triggers follow it."""
        assert self.mirror is not None
        assert self.nc is not None
        sync = JobSync(
            self.nc,
            self.cache,
            self.config.identity(),
            check_interval=self.config.sync_check_interval,
            on_report=self.sync_notifier.report,
        )
        sync.listeners.append(self.mirror.on_change)
        if self.files is not None:
            sync.listeners.append(self.files.on_change)
        return sync

    async def _guard_credential(self) -> None:
        """Stop the agent when its credential turns out not to cover its name (e.g. heartbeat denied)."""
        while not self.credential.fatal:
            self.credential.changed.clear()
            await self.credential.changed.wait()
        raise ConfigError(self.credential.fatal)

    def metrics_runs(self, state: str) -> None:
        if self.metrics is not None:
            self.metrics.runs.labels(state=state).inc()

    def _sync_report(self) -> dict[str, Any]:
        sync = self.sync
        position = sync.position if sync else None
        return {
            "agent": self.config.name,
            "revision": position.last_seq if position else 0,
            "full_resyncs": sync.full_resyncs if sync else 0,
            "report": list(sync.report) if sync else [],
        }

    async def _resync(self, full: bool, timeout: float) -> dict[str, Any]:
        """``natsched sync``: re-read the jobs bucket now; what changed, the revision reached."""
        if self.sync is None:
            raise NotConnectedError("not connected to NATS yet")
        log.info("agent %s: %s resync asked for", self.config.name, "a full" if full else "a")
        return await self.sync.resync(full=full, timeout=timeout)

    def _release_held(self) -> None:
        if self.executor is not None:
            self.spawn(self.executor.release_held(), name="release-held")

    async def _heartbeat(self) -> Heartbeat:
        position = self.sync.position if self.sync else None
        jobs_cached = await self.cache.count()
        if self.metrics is not None:
            self.metrics.cache_jobs.set(jobs_cached)
            self.metrics.sync_lag.set(
                0.0 if self.sync and self.sync.synced.is_set() else time.time() - self.started_at
            )
        return sample_load(
            agent=self.config.name,
            started_at=self.started_at,
            running=self.running,
            max_concurrency=self.config.max_concurrency,
            tags=self.config.tags,
            pools=self.config.pools,
            groups=self.config.groups,
            jobs_cached=jobs_cached,
            synced_revision=position.last_seq if position else 0,
            priority=self.config.priority,
            connected_since=self.connected_since,
            runs=self.executor.running_runs(MAX_REPORTED_RUNS) if self.executor else {},
        )
