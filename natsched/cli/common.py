"""What every natsched command shares: connection options, logging, error handling.

A :class:`NatschedError` becomes one readable line on stderr and exit code 1, never a
traceback; ``--server`` and ``NATS_URL`` work for every command, as with the nats CLI.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

# Re-exported for the commands; defined apart so that natsched-agent need not import rich.
from natsched.cli.basics import ServerOption as ServerOption
from natsched.cli.basics import setup_logging as setup_logging
from natsched.client import AdminClient
from natsched.errors import ApiError, NatschedError
from natsched.settings import ConnectionSettings
from natsched.vocab import FAILED_STATES, RunState

T = TypeVar("T")
# Piped output (scripts, grep) is never cut to a terminal's width.
console = Console() if sys.stdout.isatty() else Console(width=250)
err_console = Console(stderr=True, soft_wrap=True)

CredsOption = Annotated[
    str | None, typer.Option("--creds", envvar="NATS_CREDS", help="NATS credentials file")
]
UserOption = Annotated[str | None, typer.Option("--user", envvar="NATS_USER", help="NATS user")]
PasswordOption = Annotated[
    str | None, typer.Option("--password", envvar="NATS_PASSWORD", help="NATS password")
]
TokenOption = Annotated[str | None, typer.Option("--token", envvar="NATS_TOKEN", help="NATS token")]
NkeyOption = Annotated[str | None, typer.Option("--nkey", envvar="NATS_NKEY", help="NATS nkey seed file")]
CaOption = Annotated[str | None, typer.Option("--tls-ca", envvar="NATS_CA", help="CA certificate (PEM)")]
CertOption = Annotated[str | None, typer.Option("--tls-cert", envvar="NATS_CERT", help="client certificate")]
KeyOption = Annotated[str | None, typer.Option("--tls-key", envvar="NATS_KEY", help="client key")]


class GlobalOptions:
    """Connection options given before the command (``natsched --creds X jobs list``)."""

    overrides: dict[str, Any] = {}


def settings(server: str | None = None) -> ConnectionSettings:
    """Connection settings: command flag > global flag > environment > default."""
    return ConnectionSettings.from_env(
        **{**GlobalOptions.overrides, "url": server or GlobalOptions.overrides.get("url")}
    )


async def call_api(server: str | None, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """One admin API request (``natsched.api.*``) to whichever master answers."""
    async with AdminClient(settings(server)) as api:
        return await api.call(subject, body)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(1)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async core; NatschedError -> one line (+ details) and exit 1, Ctrl-C -> 130."""
    try:
        return asyncio.run(coro)
    except NatschedError as exc:
        lines = str(exc).splitlines() or [type(exc).__name__]
        details = exc.details if isinstance(exc, ApiError) else lines[1:]
        error = fail(lines[0])
        for detail in details:
            if detail != lines[0]:
                err_console.print(f"  {detail.strip()}", highlight=False, markup=False)
        raise error from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


# How each run state is shown, everywhere in the CLI.
STATE_COLOURS: dict[str, str] = {
    RunState.QUEUED: "blue",
    RunState.STARTED: "cyan",
    RunState.SUCCEEDED: "green",
    RunState.SKIPPED: "yellow",
    **{state: "red" for state in FAILED_STATES},
    "running": "cyan",  # a chain run that has not ended
}


def age(seconds: float) -> str:
    """A short human duration: 0.4s, 12s, 3m05s, 2h10m, 3d4h."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600)}h"
