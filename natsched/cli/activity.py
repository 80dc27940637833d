"""A live feed of what happens in a natsched cluster, for ``natsched up`` (and operators).

It reads only public surfaces: the agents bucket (joins, syncs, departures), the jobs
bucket (definitions) and ``natsched.event.>`` (runs), so it shows what any operator
could see with the nats CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue
from rich.console import Console

from natsched import codec, subjects
from natsched.cli.common import STATE_COLOURS
from natsched.errors import CodecError
from natsched.models import Heartbeat

log = logging.getLogger(__name__)


def _stamp() -> str:
    return time.strftime("%H:%M:%S")


class ActivityFeed:
    def __init__(self, nc: Client, console: Console) -> None:
        self._nc = nc
        self._console = console
        self._agents: dict[str, Heartbeat] = {}

    def say(self, text: str) -> None:
        self._console.print(f"[dim]{_stamp()}[/] {text}", highlight=False)

    async def run(self) -> None:
        await self._nc.subscribe(subjects.EVENTS_SUBJECTS, cb=self._on_event)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(subjects.AGENTS_BUCKET, self._on_agent))
            tg.create_task(self._watch(subjects.JOBS_BUCKET, self._on_job))

    async def _bucket(self, name: str) -> KeyValue:
        js = self._nc.jetstream()
        while True:
            try:
                return await js.key_value(name)
            except BucketNotFoundError:
                await asyncio.sleep(0.5)

    async def _watch(self, bucket: str, handle: Any) -> None:
        kv = await self._bucket(bucket)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is not None:
                handle(entry)

    def _on_agent(self, entry: KeyValue.Entry) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            if self._agents.pop(entry.key, None) is not None:
                self.say(f"[red]agent {entry.key} left[/] (heartbeat expired)")
            return
        try:
            hb = codec.decode_heartbeat(entry.value, entry.key)
        except CodecError as exc:
            self.say(f"[yellow]unreadable heartbeat[/] {exc}")
            return
        before = self._agents.get(hb.agent)
        self._agents[hb.agent] = hb
        if before is None:
            tags = f" tags={','.join(hb.tags)}" if hb.tags else ""
            pools = f" pools={','.join(hb.pools)}" if hb.pools else ""
            self.say(f"[green]agent {hb.agent} joined[/] (v{hb.version}{tags}{pools}, load {hb.load1:.2f})")
        if before is None or (before.jobs_cached, before.synced_revision) != (
            hb.jobs_cached,
            hb.synced_revision,
        ):
            self.say(
                f"agent {hb.agent} synced: {hb.jobs_cached} job(s) cached, at revision {hb.synced_revision}"
            )

    def _on_job(self, entry: KeyValue.Entry) -> None:
        if entry.operation in ("DEL", "PURGE"):
            self.say(f"[red]job {entry.key} deleted[/] (revision {entry.revision})")
            return
        try:
            spec = codec.decode_job(entry.value or b"", entry.key)
        except CodecError as exc:
            self.say(f"[yellow]invalid definition[/] {exc}")
            return
        state = "" if spec.enabled else " [yellow](disabled)[/]"
        self.say(f"job [bold]{spec.key}[/] defined: {spec.mode.value}, revision {entry.revision}{state}")

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = json.loads(msg.data)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        state = str(event.get("state", msg.subject.rsplit(".", 1)[-1]))
        colour = STATE_COLOURS.get(state, "white")
        extra = ""
        if event.get("exit_code") is not None:
            extra = f" exit {event['exit_code']}"
        if event.get("duration") is not None:
            extra += f" in {float(event['duration']):.3f}s"
        self.say(
            f"run {event.get('run_id', '?')} [bold]{event.get('job', '?')}[/] on {event.get('agent', '?')}: "
            f"[{colour}]{state}[/]{extra}"
        )
