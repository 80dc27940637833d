"""``natsched jobs list|show|delete|enable|disable``."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from natsched import subjects
from natsched.cli.agents import read_agents
from natsched.cli.common import ServerOption, call_api, console, err_console, run, settings
from natsched.errors import NatschedError, SpecError
from natsched.triggers.registry import parse_trigger

app = typer.Typer(help="List, show, delete, enable and disable jobs.", no_args_is_help=True)
JobsArg = Annotated[list[str], typer.Argument(help="jobs as <group>.<job> (or a unique bare name)")]


def _trigger_text(table: dict[str, Any], group: str) -> str:
    try:
        return parse_trigger(table, group).describe()
    except SpecError:  # a kind this CLI does not know (a newer master): shown as it is
        return json.dumps(table, sort_keys=True)


@app.command("list")
def list_jobs(
    group: Annotated[str | None, typer.Option("--group", "-g", help="only this group")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="only jobs that target this agent")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    server: ServerOption = None,
) -> None:
    """List job definitions."""
    body: dict[str, Any] = {k: v for k, v in (("group", group), ("agent", agent)) if v}
    result = run(call_api(server, subjects.API_JOBS_LIST, body))
    local = run(_local_jobs(server, group, agent))
    if as_json:
        console.print_json(json.dumps([{**j, "origin": "master"} for j in result["jobs"]] + local))
        return
    if agent and not result.get("agent_known"):
        err_console.print(f"note: agent {agent!r} has no live heartbeat; matched by name only")
    table = Table("job", "mode", "enabled", "targets", "triggers", "command", box=None)
    for job in result["jobs"]:
        targets = " ".join(f"{k}={','.join(v)}" for k, v in job["targets"].items())
        command = job["command"] if isinstance(job["command"], str) else " ".join(job["command"])
        table.add_row(
            job["key"],
            job["mode"],
            "yes" if job["enabled"] else "[red]no[/]",
            targets,
            "; ".join(_trigger_text(t, job["group"]) for t in job["triggers"]) or "-",
            command,
        )
    console.print(table)
    if local:
        console.print(f"jobs agents define themselves ({len(local)}):", highlight=False)
        mine = Table("job", "origin", "state", "triggers", "command", box=None)
        for row in local:
            command = row["command"] if isinstance(row["command"], str) else " ".join(row["command"])
            state = row["state"] + (f" ({row['reason']})" if row["reason"] else "")
            triggers = "; ".join(_trigger_text(t, row["group"]) for t in row["triggers"]) or "-"
            mine.add_row(row["key"], row["origin"], state, triggers, command)
        console.print(mine)
    for problem in result.get("invalid", []):
        err_console.print(f"[yellow]invalid definition in bucket:[/] {problem}", highlight=False)
    if result.get("truncated"):
        err_console.print("list truncated; filter with --group or --agent")
    console.print(f"{len(result['jobs'])} job(s)", highlight=False)


async def _local_jobs(server: str | None, group: str | None, agent: str | None) -> list[dict[str, Any]]:
    """The jobs live agents define themselves (asked from each), marked with their origin."""
    reports: dict[str, dict[str, Any]] = {}
    try:
        await read_agents(settings(server), reports)
    except NatschedError:  # no agents bucket yet: no agent to ask
        return []
    rows: list[dict[str, Any]] = []
    for name, report in sorted(reports.items()):
        if agent and name != agent:
            continue
        for job in (report.get("local") or {}).get("jobs", []):
            job_group = str(job["key"]).partition(".")[0]
            if group and job_group != group:
                continue
            origin = f"agent {name}: {job['file']}"
            rows.append({**job, "group": job_group, "agent": name, "origin": origin})
    return rows


@app.command()
def show(
    job: Annotated[str, typer.Argument(help="<group>.<job> or a unique bare name")],
    server: ServerOption = None,
) -> None:
    """Show one job's full definition (JSON)."""
    result = run(call_api(server, subjects.API_JOBS_GET, {"job": job}))
    console.print(f"# {result['key']} (revision {result['revision']})", highlight=False)
    console.print_json(json.dumps(result["spec"]))


@app.command()
def delete(jobs: JobsArg, server: ServerOption = None) -> None:
    """Delete jobs."""
    result = run(call_api(server, subjects.API_JOBS_DELETE, {"jobs": jobs}))
    for key in result["deleted"]:
        console.print(f"[red]- {key}[/] (deleted)", highlight=False)


def _toggle(subject: str, jobs: list[str], server: str | None, word: str) -> None:
    result = run(call_api(server, subject, {"jobs": jobs}))
    for key in result["changed"]:
        console.print(f"{key}: {word}", highlight=False)
    for key in result["unchanged"]:
        console.print(f"{key}: already {word}", highlight=False)


@app.command()
def enable(jobs: JobsArg, server: ServerOption = None) -> None:
    """Enable jobs."""
    _toggle(subjects.API_JOBS_ENABLE, jobs, server, "enabled")


@app.command()
def disable(jobs: JobsArg, server: ServerOption = None) -> None:
    """Disable jobs (they stay defined but do not fire)."""
    _toggle(subjects.API_JOBS_DISABLE, jobs, server, "disabled")
