"""``natsched run JOB [--wait] [--follow]`` and ``natsched cancel RUN``.

``run`` goes through the public trigger subject, exactly as a nats CLI user or any other
client would; with ``--wait`` it exits with the job's exit code.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Annotated, Any

import typer
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched import subjects
from natsched.cli.common import ServerOption, console, fail, run, settings
from natsched.cli.runs import print_log
from natsched.client import AdminClient, request_trigger
from natsched.connection import connect
from natsched.errors import ApiError, CodecError, ConfigError, NotFoundError
from natsched.events import RunEvent, parse_event
from natsched.runs import get_run


def env_pairs(values: list[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--env {item!r}: use NAME=value")
        env[name] = value
    return env


async def _request_trigger(nc: Client, job: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await request_trigger(nc, job, body)
    _print_started(reply, job)
    if not reply.get("ok"):
        raise ApiError(str(reply.get("error", "the trigger was refused")))
    return reply


async def trigger_and_wait(
    server: str | None, job: str, body: dict[str, Any], wait: bool, follow: bool
) -> int:
    nc = await connect(settings(server))
    finals: dict[str, RunEvent] = {}
    done = asyncio.Event()
    wanted: set[str] = set()

    async def on_event(msg: Msg) -> None:
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            return
        if event.state.final:
            finals[event.run_id] = event
            if wanted and wanted <= finals.keys():
                done.set()

    try:
        if wait or follow:  # subscribe first: a short job may end before the reply arrives
            await nc.subscribe(subjects.EVENTS_SUBJECTS, cb=on_event)
        reply = await _request_trigger(nc, job, body)
        if not (wait or follow):
            return 0
        wanted.update(r["run_id"] for r in reply["runs"] if r["ok"])
        if reply.get("repeat"):  # the runs of an earlier request with this trigger id may have ended
            await _ended_before(nc, wanted - finals.keys(), finals)
        # A target that never started the run (offline, refused, skipped) is a failed outcome
        # too: one success elsewhere must not hide it from a script checking the exit code.
        refused = [r for r in reply["runs"] if not r["ok"]]
        if follow and wanted:
            first = sorted(wanted)[0]
            agents = {r["run_id"]: r["agent"] for r in reply["runs"] if r["ok"]}
            await print_log(nc, first, follow=True, agent=agents.get(first))
        if wanted - finals.keys():
            done.clear()
            await done.wait()
        code = _exit_code([finals[run_id] for run_id in sorted(wanted)])
        never_started = _refused_code(refused)
        return code or never_started
    finally:
        await nc.close()


async def _ended_before(nc: Client, run_ids: set[str], finals: dict[str, RunEvent]) -> None:
    """Final events already in the stream (published before we subscribed)."""
    for run_id in sorted(run_ids):
        try:
            summary = await get_run(nc.jetstream(), run_id)
        except NotFoundError:
            continue
        if summary.latest.state.final:
            finals.setdefault(run_id, summary.latest)


def _refused_code(refused: list[dict[str, Any]]) -> int:
    """Print each target whose run never started; 1 if there is one."""
    for target in refused:
        console.print(
            f"{target['run_id'] or '-'} on {target['agent'] or '-'}: {target['state'] or 'failed'}"
            + (f" — {target['reason']}" if target.get("reason") else ""),
            highlight=False,
        )
    return 1 if refused else 0


def _print_started(reply: dict[str, Any], job: str) -> None:
    for started in reply.get("runs", []):
        mark = "[green]started[/]" if started["ok"] else f"[red]{started['state']}[/]"
        reason = f" ({started['reason']})" if started.get("reason") else ""
        console.print(
            f"{started['run_id'] or '-'} {reply.get('job', job)} on {started['agent'] or '-'}: "
            f"{mark}{reason}",
            highlight=False,
        )


def _exit_code(finals: list[RunEvent]) -> int:
    """0 if every run succeeded, else the first failure's exit code (1 if it has none)."""
    code = 0
    for event in finals:
        console.print(
            f"{event.run_id} on {event.agent}: {event.state.value}"
            + (f" (exit {event.exit_code})" if event.exit_code is not None else "")
            + (f" — {event.reason}" if event.reason else ""),
            highlight=False,
        )
        if event.state.value != "succeeded":
            code = code or (event.exit_code if event.exit_code else 1)
    return code


def run_job(
    job: Annotated[str, typer.Argument(help="<group>.<job> (or a unique bare name)")],
    arg: Annotated[list[str] | None, typer.Option("--arg", help="extra argument (repeatable)")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=value (repeatable)")] = None,
    correlation_id: Annotated[str | None, typer.Option(help="carried into the run's events")] = None,
    trigger_id: Annotated[
        str | None,
        typer.Option(help="start the job once for all requests with this id (default: one per command)"),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="wait for the end; exit with its exit code")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="print the output live, then wait")] = False,
    server: ServerOption = None,
) -> None:
    """Start a job now, on its agents, through natsched.trigger.<job>."""
    if not subjects.is_job_ref(job):  # an over-long name would cost the connection, not fail cleanly
        raise fail(f"{subjects.shown(job)} is not a job: <group>.<job> or a name ({subjects.TOKEN_RULE})")
    body: dict[str, Any] = {}
    if arg:
        body["args"] = arg
    if env:
        try:
            body["env"] = env_pairs(env)
        except ConfigError as exc:
            raise fail(str(exc)) from None
    if correlation_id:
        body["correlation_id"] = correlation_id
    # One id per command: a request whose answer got lost is sent again without a second start.
    body["trigger_id"] = trigger_id or secrets.token_hex(8)
    if not subjects.is_token(body["trigger_id"]):
        raise fail(f"--trigger-id {subjects.shown(trigger_id)} must be {subjects.TOKEN_RULE}")
    code = run(trigger_and_wait(server, job, body, wait, follow))
    raise typer.Exit(code)


def cancel(run_id: Annotated[str, typer.Argument(help="run id")], server: ServerOption = None) -> None:
    """Stop a running run (SIGTERM to its process tree, then SIGKILL) on whichever agent runs it."""

    async def core() -> dict[str, Any]:
        async with AdminClient(settings(server)) as api:
            return await api.call(subjects.API_RUNS_CANCEL, {"run_id": run_id})

    result = run(core())
    console.print(f"{run_id} on {result['agent']}: cancel sent", highlight=False)
