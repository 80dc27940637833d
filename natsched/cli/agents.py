"""``natsched agents``: live agents from their heartbeats (works without a master)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg
from rich.table import Table

from natsched import codec, subjects
from natsched.cli.common import ServerOption, age, console, err_console, run, settings
from natsched.cli.syncreport import ask_all, local_problems, local_summary
from natsched.connection import connect
from natsched.errors import CodecError, NotFoundError, VersionError
from natsched.kvscan import scan
from natsched.models import Heartbeat
from natsched.settings import ConnectionSettings

MASTERS_WAIT = 0.25  # every master answers natsched.masters.status at once (the agents' reports take longer)


async def read_agents(
    conn: ConnectionSettings,
    reports: dict[str, dict[str, Any]] | None = None,
    unproven: dict[str, list[str]] | None = None,
) -> tuple[list[Heartbeat], list[str]]:
    """Every heartbeat in the agents bucket, and why the others could not be read
    (``<agent>: incompatible: ...`` for an agent of another protocol version). With
    ``reports``, also each live agent's sync report (its local jobs), into that dict; with
    ``unproven``, the pools and tags the masters do not count for each agent."""
    nc = await connect(conn.with_name("natsched-cli"))
    try:
        js = nc.jetstream()
        try:
            entries = await scan(js, subjects.AGENTS_BUCKET)
        except Exception as exc:  # the bucket's stream is missing: no master ever ran here
            raise NotFoundError(f"no agents bucket ({exc}); has a master started on this server?") from None
        asks = await asyncio.gather(
            ask_all(nc, sorted(entries)) if reports is not None else _nothing(),
            masters_unproven(nc) if unproven is not None else _nothing(),
        )
        if reports is not None:
            reports.update(asks[0])
        if unproven is not None:
            unproven.update(asks[1])
    finally:
        await nc.close()
    heartbeats: list[Heartbeat] = []
    bad: list[str] = []
    for key, entry in sorted(entries.items()):
        try:
            heartbeats.append(codec.decode_heartbeat(entry.value, key))
        except VersionError as exc:
            bad.append(f"{key}: incompatible: {exc}")
        except CodecError as exc:
            bad.append(f"{key}: {exc}")
    return heartbeats, bad


async def _nothing() -> dict[str, Any]:
    return {}


async def masters_unproven(nc: Client) -> dict[str, list[str]]:
    """agent -> the pools and tags its heartbeat names that the masters do not count (not
    proven: its credential does not allow them), from the masters' status answers; {} when
    no master answers within ``MASTERS_WAIT``."""
    found: dict[str, list[str]] = {}

    async def on_answer(msg: Msg) -> None:
        with contextlib.suppress(CodecError):
            for agent, names in codec.from_json(msg.data, "master status").get("unproven", {}).items():
                if isinstance(names, list):
                    found[str(agent)] = sorted({*found.get(str(agent), []), *map(str, names)})

    sub = await nc.subscribe(nc.new_inbox(), cb=on_answer)
    try:
        await nc.publish(subjects.MASTERS_STATUS, b"{}", reply=sub.subject)
        await asyncio.sleep(MASTERS_WAIT)
    finally:
        await sub.unsubscribe()
    return found


def agents(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    server: ServerOption = None,
) -> None:
    """List live agents with their load and how long since they were last seen."""
    reports: dict[str, dict[str, Any]] = {}
    unproven: dict[str, list[str]] = {}
    heartbeats, bad = run(read_agents(settings(server), reports, unproven))
    if as_json:
        unreadable = [{"agent": p.split(":", 1)[0], "problem": p.split(": ", 1)[1]} for p in bad]
        rows = [
            asdict(h) | {"local": reports.get(h.agent, {}).get("local"), "unproven": unproven.get(h.agent)}
            for h in heartbeats
        ]
        console.print_json(json.dumps(rows + unreadable))
        return
    now = time.time()
    table = Table(
        "agent",
        "seen",
        "load1",
        "cpu%",
        "mem%",
        "running",
        "jobs",
        "local",
        "rev",
        "tags",
        "pools",
        "version",
        "up",
        box=None,
    )
    for hb in heartbeats:
        table.add_row(
            hb.agent,
            age(max(0.0, now - hb.sent_at)) + " ago",
            f"{hb.load1:.2f}",
            f"{hb.cpu_percent:.0f}",
            f"{hb.memory_percent:.0f}",
            f"{hb.running}/{hb.max_concurrency}",
            str(hb.jobs_cached),
            local_summary(reports.get(hb.agent, {})),
            str(hb.synced_revision),
            _names(hb.tags, "tag", unproven.get(hb.agent, [])),
            _names(hb.pools, "pool", unproven.get(hb.agent, [])),
            hb.version,
            age(max(0.0, now - hb.started_at)),
        )
    console.print(table)
    for hb in heartbeats:
        for line in local_problems(hb.agent, reports.get(hb.agent, {})):
            err_console.print(f"[yellow]{line}[/]", highlight=False, markup=True)
    for agent, names in sorted(unproven.items()):
        err_console.print(
            f"[yellow]agent {agent}: {', '.join(names)} not proven (its credential does not allow "
            "them: 'natsched permissions --agent-tags'): no run aimed at them goes there[/]",
            highlight=False,
        )
    for problem in bad:
        err_console.print(f"[yellow]agent {problem}[/]", highlight=False)
    console.print(f"{len(heartbeats)} live agent(s)", highlight=False)


def _names(names: tuple[str, ...], kind: str, unproven: list[str]) -> str:
    """``web,linux?``: a name the masters do not count (not proven) ends in ``?``."""
    return ",".join(f"{n}?" if f"{kind} {n}" in unproven else n for n in names) or "-"
