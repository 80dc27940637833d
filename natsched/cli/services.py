"""``natsched master`` and ``natsched agent``: run a service in the foreground."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from natsched.cli.common import ServerOption, fail, settings, setup_logging
from natsched.errors import NatschedError
from natsched.master.service import MasterService
from natsched.service import serve

master_app = typer.Typer(help="Run a master, or ask about masters.", invoke_without_command=True)


@master_app.callback()
def master(
    ctx: typer.Context,
    server: ServerOption = None,
    replicas: Annotated[int, typer.Option(help="JetStream replicas for buckets and streams it creates")] = 1,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run a master service in the foreground until Ctrl-C or SIGTERM."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from natsched.buckets import StorageSettings

    setup_logging(verbose)
    try:
        asyncio.run(serve(MasterService(settings(server), storage=StorageSettings(replicas=replicas))))
    except NatschedError as exc:
        raise fail(str(exc)) from None


def agent_executable() -> list[str]:
    """How to start natsched-agent: the console script beside this Python, else ``python -m agent``."""
    script = Path(sys.executable).parent / "natsched-agent"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "agent"]


def agent(ctx: typer.Context) -> None:
    """Run an agent in the foreground (the same as natsched-agent; see natsched-agent --help)."""
    # natsched/ never imports agent/: hand over to the agent's own entry point.
    command = agent_executable()
    os.execv(command[0], command + list(ctx.args))
