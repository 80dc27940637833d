"""``natsched sync-report AGENT``: what an agent's cache took in, when (asked from the agent)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
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
