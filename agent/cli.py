"""``natsched-agent``: run the agent service in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent import spawn
from agent.check import check_exit_code
from agent.config import AgentConfig
from agent.runner import install_fast_child_watcher
from agent.service import AgentService
from natsched import eventloop
from natsched.cli.basics import ServerOption, fail_plain, setup_logging
from natsched.errors import NatschedError
from natsched.service import serve
from natsched.settings import ConnectionSettings

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for value in values for v in value.split(",") if v]


@app.command()
def run_agent(
    name: Annotated[
        str | None, typer.Option(help="agent name [default: host name; env NATSCHED_AGENT_NAME]")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="tag (repeat, or comma-separated)")] = None,
    pool: Annotated[list[str] | None, typer.Option("--pool", help="pool to serve (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option("--group", help="only these job groups")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="where the SQLite cache lives")] = None,
    jobs_dir: Annotated[
        Path | None, typer.Option(help="the agent's own job files (mirror mode, this agent only)")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="NATSCHED_AGENT_CONFIG", help="agent config file (TOML)"),
    ] = None,
    server: ServerOption = None,
    creds: Annotated[str | None, typer.Option("--creds", envvar="NATS_CREDS")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    check: Annotated[
        bool, typer.Option("--check", help="check config, connection and permissions, then exit (0 = ready)")
    ] = False,
) -> None:
    """Run a natsched agent: cache the jobs that target it, heartbeat, run jobs."""
    setup_logging(verbose)
    try:
        agent_config = AgentConfig.load(
            file=config,
            name=name,
            tags=_list(tag),
            pools=_list(pool),
            groups=_list(group),
            state_dir=state_dir,
            jobs_dir=jobs_dir,
        )
        settings = ConnectionSettings.from_env(url=server, creds=creds)
        if check:
            raise typer.Exit(check_exit_code(agent_config, settings))
        install_fast_child_watcher()  # for the stock loop (uvloop watches its children itself)
        # uvloop only where every job starts without the loop's subprocess support (pidfds).
        eventloop.run(serve(AgentService(agent_config, settings)), uvloop_ok=spawn.available())
    except NatschedError as exc:
        raise fail_plain(str(exc)) from None


def main() -> None:
    app()
