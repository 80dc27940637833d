"""``natsched secrets keygen|set|list|delete``: values go to the master, never on argv."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from natsched.cli.common import ServerOption, call_api, console, fail, run
from natsched.errors import NatschedError
from natsched.secrets import generate_key_file
from natsched.subjects import API_SECRETS_DELETE, API_SECRETS_LIST, API_SECRETS_SET

app = typer.Typer(help="Secrets for ${secret:NAME} in jobs, stored encrypted.", no_args_is_help=True)


@app.command()
def keygen(path: Annotated[Path, typer.Argument(help="where to write the key (mode 0600)")]) -> None:
    """Write a new 256-bit key; give it to masters (--secret-key-file) and agents (secret_key_file)."""
    try:
        generate_key_file(path)
    except NatschedError as exc:
        raise fail(str(exc)) from None
    console.print(f"secret key written to {path} (mode 0600)", highlight=False)


@app.command("set")
def set_secret(name: str, server: ServerOption = None) -> None:
    """Store a secret; the value is read from stdin (or a hidden prompt on a terminal)."""
    if sys.stdin.isatty():
        value = typer.prompt(f"value of {name}", hide_input=True, confirmation_prompt=True)
    else:
        value = sys.stdin.read().rstrip("\n")
    reply = run(call_api(server, API_SECRETS_SET, {"name": name, "value": value}))
    console.print(f"secret {reply['name']} stored", highlight=False)


@app.command("list")
def list_secrets(server: ServerOption = None) -> None:
    """Names only; values are never shown."""
    for name in run(call_api(server, API_SECRETS_LIST, {}))["secrets"]:
        console.print(name, highlight=False)


@app.command("delete")
def delete_secret(name: str, server: ServerOption = None) -> None:
    reply = run(call_api(server, API_SECRETS_DELETE, {"name": name}))
    console.print(f"secret {reply['deleted']} deleted", highlight=False)
