"""The agent service: cache first, then NATS.

Start-up never waits for NATS: the cache is opened and loaded, then a background task
connects (retrying forever) and, once connected, syncs definitions and publishes the
heartbeat. So an agent started while NATS is down still has (and will run) its jobs.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client

from agent.cache import JobCache
from agent.config import AgentConfig
from agent.heartbeat import HeartbeatPublisher, sample_load
from agent.sync import JobSync
from natsched.connection import connect
from natsched.models import Heartbeat
from natsched.service import Service
from natsched.settings import ConnectionSettings

log = logging.getLogger(__name__)


class AgentService(Service):
    """``async with AgentService(config, settings) as agent: await agent.run_forever()``."""

    def __init__(self, config: AgentConfig, settings: ConnectionSettings) -> None:
        super().__init__()
        self.config = config
        self.settings = settings.with_name(f"natsched-agent-{config.name}")
        self.cache = JobCache(config.cache_path)
        self.nc: Client | None = None
        self.sync: JobSync | None = None
        self.connected = asyncio.Event()
        self.started_at = time.time()
        self.connected_since = 0.0
        self.running = 0
        self._stopping = False

    async def start(self) -> None:
        await self.cache.open()
        log.info(
            "agent %s: %d jobs in cache %s",
            self.config.name,
            await self.cache.count(),
            self.config.cache_path,
        )
        self.spawn(self._connect_and_serve(), name="agent-connection", critical=True)

    async def stop(self) -> None:
        self._stopping = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), 5.0)
            except Exception:  # noqa: BLE001 - shutting down: a failed drain changes nothing
                log.debug("drain failed; closing", exc_info=True)
                await self.nc.close()
        await self.cache.close()

    async def synced(self, timeout: float) -> None:
        """Wait until connected and caught up with the bucket (for tests and `up`)."""
        async with asyncio.timeout(timeout):
            await self.connected.wait()
            assert self.sync is not None
            await self.sync.synced.wait()

    async def _on_reconnect(self) -> None:
        log.info("agent %s reconnected to NATS", self.config.name)
        self.connected_since = time.time()

    async def _on_disconnect(self) -> None:
        if self._stopping:
            return
        log.warning("agent %s lost NATS; running from cache", self.config.name)

    async def _connect_and_serve(self) -> None:
        log.info("agent %s connecting to %s", self.config.name, self.settings.describe())
        self.nc = await connect(
            self.settings, forever=True, on_reconnect=self._on_reconnect, on_disconnect=self._on_disconnect
        )
        self.connected_since = time.time()
        js = self.nc.jetstream()
        self.sync = JobSync(
            js, self.cache, self.config.identity(), check_interval=self.config.sync_check_interval
        )
        self.connected.set()
        log.info("agent %s connected", self.config.name)
        heartbeat = HeartbeatPublisher(js, build=self._heartbeat, interval=self.config.heartbeat_interval)
        self.spawn(self.sync.run(), name="job-sync", critical=True)
        self.spawn(heartbeat.run(), name="heartbeat", critical=True)

    async def _heartbeat(self) -> Heartbeat:
        position = self.sync.position if self.sync else None
        return sample_load(
            agent=self.config.name,
            started_at=self.started_at,
            running=self.running,
            max_concurrency=self.config.max_concurrency,
            tags=self.config.tags,
            pools=self.config.pools,
            groups=self.config.groups,
            jobs_cached=await self.cache.count(),
            synced_revision=position.last_seq if position else 0,
            connected_since=self.connected_since,
        )
