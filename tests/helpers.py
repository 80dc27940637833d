"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from natsched import subjects
from natsched.errors import StartUnansweredError
from natsched.master.service import MasterService


def job(name: str, **fields: Any) -> dict[str, Any]:
    """A job mapping; its group comes from the file's top-level ``group`` unless given."""
    data: dict[str, Any] = {"name": name, "command": ["true"], "targets": {"agents": ["*"]}}
    data.update(fields)
    return data


def every_second_tick(witness: Path) -> dict[str, Any]:
    """``tick``: a slave job on agent s1 every second (missed slots all run) that appends its run
    id to ``witness``: the fault tests' count of real executions per slot."""
    return job(
        "tick",
        mode="slave",
        targets={"agents": ["s1"]},
        command=["sh", "-c", f'echo "$NATSCHED_RUN_ID" >> {witness}'],
        triggers=[{"every": "1s"}],
        misfire="run-all",
        misfire_cap=300,
    )


def executed(witness: Path) -> list[str]:
    """The run ids a witness file holds, one per real execution."""
    return witness.read_text().split() if witness.exists() else []


def executed_at_least(witness: Path, count: int) -> Callable[[], Awaitable[bool]]:
    """For ``eventually``: has ``witness`` seen ``count`` executions yet?"""

    async def check() -> bool:
        return len(executed(witness)) >= count

    return check


def toml_jobs(*jobs: dict[str, Any], group: str | None = None) -> str:
    """A job file in TOML from job mappings (JSON-compatible TOML inline tables)."""
    lines = [f'group = "{group}"'] if group else []
    for entry in jobs:
        lines.append("[[jobs]]")
        for key, value in entry.items():
            lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


async def api(nc: Client, subject: str, body: dict[str, Any] | bytes, timeout: float = 10) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = await nc.request(subject, data, timeout=timeout)
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def apply(
    nc: Client, content: str, *, prune: bool = False, dry_run: bool = False, source: str = "test.toml"
) -> dict[str, Any]:
    return await api(
        nc, subjects.API_APPLY, {"source": source, "content": content, "prune": prune, "dry_run": dry_run}
    )


async def stream_events(nc: Client, timeout: float = 10) -> list[dict[str, Any]]:
    """Every message now in NATSCHED_EVENTS, decoded, in stream order."""
    import asyncio

    from nats.js import api as js_api

    js = nc.jetstream()
    info = await js.stream_info(subjects.EVENTS_STREAM)
    if not info.state.messages:
        return []
    events: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        events.append(json.loads(msg.data))
        if msg.metadata.num_pending == 0:
            done.set()

    sub = await js.subscribe(
        subjects.EVENTS_SUBJECTS,
        stream=subjects.EVENTS_STREAM,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        async with asyncio.timeout(timeout):
            await done.wait()
    finally:
        await sub.unsubscribe()
    return events


async def started_master(make: Callable[[], MasterService], within: float = 30.0) -> MasterService:
    """``make()``'s master, started (``__aenter__``) as ``serve()`` starts one: again while
    JetStream does not answer its start. Seen in CI on a loaded VM (nats-py's 5 s timeout on
    a JetStream call of the start); production's serve() starts again on it too."""
    async with asyncio.timeout(within):
        while True:
            master = make()
            try:
                return await master.__aenter__()
            except StartUnansweredError:
                await asyncio.sleep(0.5)


def file_lines(path: Path) -> list[str]:
    """The lines of a witness file (one per real execution), none while it does not exist."""
    return path.read_text().splitlines() if path.exists() else []


async def has_lines(path: Path, count: int) -> bool:
    """For ``eventually``: does ``path`` hold ``count`` lines yet?"""
    return len(file_lines(path)) >= count
