"""``natsched agents``: live agents from their heartbeats (works without a master)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from natsched import codec, subjects
from natsched.cli.common import ServerOption, age, console, err_console, run, settings
from natsched.cli.syncreport import ask_all, local_problems, local_summary
from natsched.connection import connect
from natsched.errors import CodecError, NotFoundError, VersionError
from natsched.kvscan import scan
from natsched.models import Heartbeat
from natsched.settings import ConnectionSettings


async def read_agents(
    conn: ConnectionSettings, reports: dict[str, dict[str, Any]] | None = None
) -> tuple[list[Heartbeat], list[str]]:
    """Every heartbeat in the agents bucket, and why the others could not be read
    (``<agent>: incompatible: ...`` for an agent of another protocol version). With
    ``reports``, also each live agent's sync report (its local jobs), into that dict."""
    nc = await connect(conn.with_name("natsched-cli"))
    try:
        js = nc.jetstream()
        try:
            entries = await scan(js, subjects.AGENTS_BUCKET)
        except Exception as exc:  # the bucket's stream is missing: no master ever ran here
            raise NotFoundError(f"no agents bucket ({exc}); has a master started on this server?") from None
        if reports is not None:
            reports.update(await ask_all(nc, sorted(entries)))
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


def agents(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    server: ServerOption = None,
) -> None:
    """List live agents with their load and how long since they were last seen."""
    reports: dict[str, dict[str, Any]] = {}
    heartbeats, bad = run(read_agents(settings(server), reports))
    if as_json:
        unreadable = [{"agent": p.split(":", 1)[0], "problem": p.split(": ", 1)[1]} for p in bad]
        rows = [asdict(h) | {"local": reports.get(h.agent, {}).get("local")} for h in heartbeats]
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
            ",".join(hb.tags) or "-",
            ",".join(hb.pools) or "-",
            hb.version,
            age(max(0.0, now - hb.started_at)),
        )
    console.print(table)
    for hb in heartbeats:
        for line in local_problems(hb.agent, reports.get(hb.agent, {})):
            err_console.print(f"[yellow]{line}[/]", highlight=False, markup=True)
    for problem in bad:
        err_console.print(f"[yellow]agent {problem}[/]", highlight=False)
    console.print(f"{len(heartbeats)} live agent(s)", highlight=False)
