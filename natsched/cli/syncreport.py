"""``natsched sync-report AGENT``: what an agent's cache took in, when (asked from the agent)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsched import codec, subjects
from natsched.cli.common import ServerOption, console, run, settings
from natsched.connection import connect
from natsched.errors import NotFoundError
from natsched.settings import ConnectionSettings


async def ask(conn: ConnectionSettings, agent: str) -> dict[str, Any]:
    nc = await connect(conn.with_name("natsched-cli"))
    try:
        msg = await nc.request(subjects.agent_sync_subject(agent), b"{}", timeout=3)
    except (NoRespondersError, NatsTimeoutError):
        raise NotFoundError(f"agent {agent!r} does not answer (not running, or not connected)") from None
    finally:
        await nc.close()
    return codec.from_json(msg.data, "sync report")


async def ask_all(nc: Client, agents: list[str], timeout: float = 1.5) -> dict[str, dict[str, Any]]:
    """The sync reports of these agents, asked in parallel; an agent that does not answer is left out."""

    async def one(agent: str) -> tuple[str, dict[str, Any] | None]:
        try:
            msg = await nc.request(subjects.agent_sync_subject(agent), b"{}", timeout=timeout)
            return agent, codec.from_json(msg.data, "sync report")
        except Exception:  # noqa: BLE001 - not answering, old version, garbage: nothing to show
            return agent, None

    answers = await asyncio.gather(*(one(agent) for agent in agents))
    return {agent: report for agent, report in answers if report is not None}


def local_summary(report: dict[str, Any]) -> str:
    """``3 local (1 refused)`` for ``natsched agents``; ``-`` without local jobs."""
    local = report.get("local") or {}
    jobs = local.get("jobs", [])
    refused = sum(1 for j in jobs if j.get("state") == "refused")
    errors = len(local.get("errors", {}))
    if not jobs and not errors:
        return "-"
    parts = [f"{refused} refused"] if refused else []
    parts += [f"{errors} file error(s)"] if errors else []
    return f"{len(jobs)}" + (f" ({', '.join(parts)})" if parts else "")


def local_problems(agent: str, report: dict[str, Any]) -> list[str]:
    """One line per refused local job and per job file the agent could not read."""
    local = report.get("local") or {}
    lines = [
        f"agent {agent}: local job {j['key']} ({j['file']}) refused: {j['reason']}"
        for j in local.get("jobs", [])
        if j.get("state") == "refused"
    ]
    lines += [f"agent {agent}: {file}: {why}" for file, why in sorted(local.get("errors", {}).items())]
    return lines


def sync_report(
    agent: Annotated[str, typer.Argument(help="agent name")],
    last: Annotated[int, typer.Option(help="at most this many entries, newest last")] = 30,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: ServerOption = None,
) -> None:
    """An agent's replication report: each batch of definitions it took in, full resyncs, when."""
    report = run(ask(settings(server), agent))
    entries = report.get("report", [])[-last:]
    if as_json:
        console.print_json(json.dumps({**report, "report": entries}))
        return
    console.print(
        f"agent {report['agent']}: at revision {report['revision']}, {report['full_resyncs']} full resync(s)",
        highlight=False,
    )
    for e in entries:
        when = datetime.fromtimestamp(e["at"]).strftime("%Y-%m-%d %H:%M:%S")
        if e["kind"] == "full resync":
            what = f"full resync: {e['jobs']} jobs" + (
                f", removed {', '.join(e['removed'])}" if e["removed"] else ""
            )
        else:
            parts = [
                f"changed {', '.join(e['changed'])}" if e["changed"] else "",
                f"deleted {', '.join(e['deleted'])}" if e["deleted"] else "",
            ]
            what = f"{e['count']} change(s): " + "; ".join(p for p in parts if p)
        console.print(f"{when}  rev {e['revision']:>6}  {what}", highlight=False)
