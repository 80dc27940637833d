"""What the long-running services' command lines need from the CLI, without rich.

``natsched-agent`` imports only this (not ``natsched.cli.common``): rich's console and the
admin client cost an agent ~2.5 MB of its idle RSS (target < 50 MB), for one error line.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="NATS_URL",
        show_envvar=True,
        help="NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222]",
    ),
]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # nats-py logs every reconnect attempt at ERROR; our own lines say what matters.
    logging.getLogger("nats").setLevel(logging.CRITICAL if not verbose else logging.DEBUG)


def fail_plain(message: str) -> typer.Exit:
    """``error: <message>`` on stderr, exit code 1 (``common.fail`` without colours)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)
