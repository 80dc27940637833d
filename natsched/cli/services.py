"""``natsched master`` and ``natsched agent``: run a service in the foreground."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from natsched import eventloop
from natsched.cli.common import ServerOption, fail, settings, setup_logging
from natsched.errors import NatschedError
from natsched.jobspec import parse_duration
from natsched.master.service import MasterService
from natsched.secrets import load_key
from natsched.senders import SmtpSettings
from natsched.service import serve

master_app = typer.Typer(help="Run a master, or ask about masters.", invoke_without_command=True)


@master_app.callback()
def master(
    ctx: typer.Context,
    server: ServerOption = None,
    replicas: Annotated[int, typer.Option(help="JetStream replicas for buckets and streams it creates")] = 1,
    lease_ttl: Annotated[
        float, typer.Option(help="leader lease: a standby takes over this long after the leader died")
    ] = 5.0,
    unresponsive_after: Annotated[
        float, typer.Option(help="seconds without heartbeat before an agent is down and its runs lost")
    ] = 10.0,
    secret_key_file: Annotated[
        Path | None,
        typer.Option(
            envvar="NATSCHED_SECRET_KEY_FILE", help="key for storing secrets (natsched secrets keygen)"
        ),
    ] = None,
    events_max_age: Annotated[str, typer.Option(help="keep run events this long (e.g. 30d)")] = "30d",
    events_max_bytes: Annotated[int, typer.Option(help="and at most this many bytes")] = 1024**3,
    logs_max_age: Annotated[str, typer.Option(help="keep run output this long")] = "7d",
    logs_max_bytes: Annotated[int, typer.Option(help="and at most this many bytes")] = 1024**3,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics on this port")] = None,
    smtp_host: Annotated[
        str, typer.Option(envvar="NATSCHED_SMTP_HOST", help="for e-mail notifications")
    ] = "",
    smtp_port: Annotated[int, typer.Option(envvar="NATSCHED_SMTP_PORT")] = 25,
    smtp_from: Annotated[str, typer.Option(envvar="NATSCHED_SMTP_FROM")] = "natsched@localhost",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a master service in the foreground until Ctrl-C or SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return

    from natsched.buckets import StorageSettings

    setup_logging(verbose)
    try:
        if lease_ttl < 1 or unresponsive_after < 1:
            raise fail("--lease-ttl and --unresponsive-after must be at least 1 second")

        def fresh_master() -> MasterService:
            return MasterService(
                settings(server),
                storage=StorageSettings(
                    replicas=replicas,
                    events_max_age=parse_duration(events_max_age, "events-max-age"),
                    events_max_bytes=events_max_bytes,
                    logs_max_age=parse_duration(logs_max_age, "logs-max-age"),
                    logs_max_bytes=logs_max_bytes,
                ),
                lease_ttl=lease_ttl,
                unresponsive_after=unresponsive_after,
                secret_key=load_key(secret_key_file) if secret_key_file else None,
                smtp=SmtpSettings(host=smtp_host, port=smtp_port, sender=smtp_from),
                metrics_port=metrics_port,
            )

        # Started again (fresh) while JetStream does not answer yet, e.g. a cluster electing.
        eventloop.run(serve(fresh_master(), restart=fresh_master))
    except NatschedError as exc:
        raise fail(str(exc)) from None


@master_app.command("status")
def master_status(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wait: Annotated[float, typer.Option(help="seconds to collect answers")] = 0.5,
    server: ServerOption = None,
) -> None:
    """Every running master: which one leads, its term and lease age, the standbys."""
    import json

    from natsched.cli.common import console, run
    from natsched.cli.masters import collect_masters

    masters = run(collect_masters(settings(server), wait))
    if as_json:
        console.print_json(json.dumps(masters))
        return
    if not masters:
        raise fail("no master answered on natsched.masters.status; start one with 'natsched master'")
    for m in sorted(masters, key=lambda m: (not m["leader"], m["master"])):
        role = "leader " if m["leader"] else "standby"
        age = f", lease renewed {m['lease_age']:.1f}s ago (ttl {m['lease_ttl']:g}s)" if m["leader"] else ""
        console.print(f"{role} {m['master']}  term {m['term']}{age}", highlight=False)


def agent_executable() -> list[str]:
    """How to start natsched-agent: the console script beside this Python, else ``python -m agent``."""
    script = Path(sys.executable).parent / "natsched-agent"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "agent"]


def agent(ctx: typer.Context) -> None:
    """Run an agent in the foreground (the same as natsched-agent; see natsched-agent --help)."""
    # natsched/ never imports agent/: hand over to the agent's own entry point.
    command = agent_executable()
    os.execv(command[0], command + list(ctx.args))
