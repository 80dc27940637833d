"""``natsched status``: masters, agents, running runs, recent failures, queue depths.

A live view (refreshed every ``--interval`` seconds, Ctrl-C to leave), or one snapshot with
``--once`` (text) or ``--json``. Everything is read from NATS directly (heartbeats, the
events stream, consumer info) plus the masters' own answers, so it works with any master.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table

from natsched import codec, subjects
from natsched.cli.common import STATE_COLOURS, ServerOption, age, console, run, settings
from natsched.cli.masters import collect_masters
from natsched.connection import connect
from natsched.errors import CodecError, VersionError
from natsched.kvscan import scan
from natsched.runs import list_runs
from natsched.settings import ConnectionSettings
from natsched.subjects import CHAINS_DURABLE, RETRIES_DURABLE
from natsched.vocab import RunState

RECENT = 3600.0  # failures of the last hour


async def snapshot(conn: ConnectionSettings) -> dict[str, Any]:
    masters = await collect_masters(conn, 0.3)
    nc = await connect(conn.with_name("natsched-status"))
    try:
        js = nc.jetstream()
        agents: list[dict[str, Any]] = []
        for key, entry in sorted((await scan(js, subjects.AGENTS_BUCKET)).items()):
            try:
                hb = codec.decode_heartbeat(entry.value, key)
                agents.append(
                    {**asdict(hb), "seen_ago": max(0.0, time.time() - hb.sent_at), "runs": len(hb.runs)}
                )
            except VersionError as exc:
                agents.append({"agent": key, "incompatible": str(exc)})
            except CodecError:
                continue
        since = time.time() - RECENT
        recent = await list_runs(js, since=since, limit=1000)
        running = [asdict(r.latest) for r in recent if r.latest.state is RunState.STARTED]
        failures = [asdict(r.latest) for r in recent if r.latest.state.failed]
        queues: dict[str, int] = {}
        for durable in (RETRIES_DURABLE, CHAINS_DURABLE):
            try:
                info = await js.consumer_info(subjects.EVENTS_STREAM, durable)
                queues[durable] = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
            except Exception:  # noqa: BLE001 - no master has created it yet
                queues[durable] = 0
        events = await js.stream_info(subjects.EVENTS_STREAM)
        queues["events stored"] = int(events.state.messages)
    finally:
        await nc.close()
    return {
        "masters": masters,
        "agents": agents,
        "running": running,
        "failures": failures[:20],
        "queues": queues,
    }


def render(snap: dict[str, Any]) -> Group:
    now = time.time()
    masters = Table("master", "role", "term", "lease", title="masters", box=None, title_justify="left")
    for m in sorted(snap["masters"], key=lambda m: (not m["leader"], m["master"])):
        lease = f"renewed {m['lease_age']:.1f}s ago" if m["leader"] else "-"
        masters.add_row(m["master"], "[green]leader[/]" if m["leader"] else "standby", str(m["term"]), lease)
    agents = Table(
        "agent",
        "seen",
        "load1",
        "cpu%",
        "mem%",
        "running",
        "version",
        title="agents",
        box=None,
        title_justify="left",
    )
    for a in snap["agents"]:
        if "incompatible" in a:
            agents.add_row(a["agent"], "-", "-", "-", "-", "-", f"[red]{a['incompatible']}[/]")
            continue
        agents.add_row(
            a["agent"], age(a["seen_ago"]) + " ago", f"{a['load1']:.2f}", f"{a['cpu_percent']:.0f}",
            f"{a['memory_percent']:.0f}", f"{a['running']}/{a['max_concurrency']}", a["version"],
        )  # fmt: skip
    running = Table("run", "job", "agent", "for", title="running", box=None, title_justify="left")
    for r in snap["running"][:20]:
        running.add_row(r["run_id"], r["job"], r["agent"], age(now - (r["started_at"] or now)))
    failures = Table(
        "run", "job", "agent", "state", "reason", title="failures (last hour)", box=None, title_justify="left"
    )
    for f in snap["failures"]:
        colour = STATE_COLOURS.get(f["state"], "white")
        failures.add_row(f["run_id"], f["job"], f["agent"], f"[{colour}]{f['state']}[/]", f["reason"][:60])
    queues = "  ".join(f"{k}: {v}" for k, v in snap["queues"].items())
    return Group(masters, agents, running, failures, f"queues  {queues}")


def status(
    once: Annotated[bool, typer.Option("--once", help="one snapshot, then exit")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one snapshot as JSON, then exit")] = False,
    interval: Annotated[float, typer.Option(help="seconds between refreshes of the live view")] = 2.0,
    server: ServerOption = None,
) -> None:
    """Masters and leader, agents, running runs, recent failures, queue depths."""
    conn = settings(server)
    if as_json:
        console.print_json(json.dumps(run(snapshot(conn)), default=str))
        return
    if once:
        console.print(render(run(snapshot(conn))))
        return

    async def live() -> None:
        with Live(render(await snapshot(conn)), console=console, refresh_per_second=4) as view:
            while True:
                await asyncio.sleep(max(0.2, interval))
                view.update(render(await snapshot(conn)))

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C leaves the live view
        run(live())
