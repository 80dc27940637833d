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
from natsched.cli.common import ServerOption, console, fail, run, settings
from natsched.connection import connect
from natsched.errors import CodecError, NotFoundError
from natsched.kvscan import scan
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
    if not subjects.is_token(agent):
        raise fail(f"{subjects.shown(agent)} is not an agent name ({subjects.TOKEN_RULE})")
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
        console.print(f"{when}  rev {e['revision']:>6}  {entry_text(e)}", highlight=False)


def entry_text(entry: dict[str, Any]) -> str:
    """One sync report entry in a line: what changed, what was deleted, what no longer targets us."""
    parts = [
        f"changed {', '.join(entry['changed'])}" if entry.get("changed") else "",
        f"deleted {', '.join(entry['deleted'])}" if entry.get("deleted") else "",
        f"no longer targets this agent: {', '.join(entry['untargeted'])}" if entry.get("untargeted") else "",
    ]
    details = "; ".join(p for p in parts if p)
    if entry["kind"] == "full resync":
        return f"full resync: {entry['count']} jobs" + (f"; {details}" if details else "")
    return f"{entry['count']} change(s): {details}"


async def sync_now(
    conn: ConnectionSettings, agents: list[str], full: bool, timeout: float
) -> list[dict[str, Any]]:
    """Ask each agent to re-read the jobs bucket now (``full``: everything); their answers."""
    nc = await connect(conn.with_name("natsched-cli"))
    body = codec.to_json({"sync": True, "full": full, "timeout": timeout})

    async def one(agent: str) -> dict[str, Any]:
        try:
            msg = await nc.request(subjects.agent_sync_subject(agent), body, timeout=timeout + 2)
            return codec.from_json(msg.data, "sync answer")
        except (NoRespondersError, NatsTimeoutError):
            return {"agent": agent, "ok": False, "error": "does not answer (not running, or not connected)"}
        except CodecError as exc:
            return {"agent": agent, "ok": False, "error": str(exc)}

    try:
        if not agents:  # --all: every agent with a live heartbeat
            agents = sorted(await scan(nc.jetstream(), subjects.AGENTS_BUCKET))
            if not agents:
                raise NotFoundError("no live agents (no heartbeat in the agents bucket)")
        return list(await asyncio.gather(*(one(agent) for agent in agents)))
    finally:
        await nc.close()


def sync(
    agents: Annotated[list[str] | None, typer.Argument(help="agent names (or --all)")] = None,
    all_agents: Annotated[bool, typer.Option("--all", help="every live agent")] = False,
    full: Annotated[bool, typer.Option("--full", help="a full resync: re-read every definition")] = False,
    timeout: Annotated[float, typer.Option(help="seconds each agent may take")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: ServerOption = None,
) -> None:
    """Replicate now: agents re-read the jobs bucket and say what changed and the revision reached."""
    if bool(agents) == all_agents:
        raise fail("name the agents, or give --all")
    if not 0 < timeout <= 300:
        raise fail("--timeout must be between 0 and 300 seconds")
    answers = run(sync_now(settings(server), list(agents or []), full, timeout))
    if as_json:
        console.print_json(json.dumps(answers))
    else:
        for answer in answers:
            console.print(answer_text(answer), highlight=False)
    if not all(answer.get("ok") for answer in answers):
        raise typer.Exit(1)


def answer_text(answer: dict[str, Any]) -> str:
    """``w1: full resync at revision 345: full resync: 12 jobs; deleted g.old`` or the error."""
    if not answer.get("ok"):
        return f"{answer.get('agent', '?')}: failed: {answer.get('error', 'no reason given')}"
    kind = "full resync" if answer.get("full") else "sync"
    changes = [entry_text(e) for e in answer.get("changes", [])]
    return f"{answer['agent']}: {kind} at revision {answer['revision']}: " + (
        "; ".join(changes) or "no change"
    )
