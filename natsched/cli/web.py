"""``natsched web``: serve the dashboard (uvicorn), and ``natsched web password NAME``."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from natsched.cli.common import ServerOption, console, fail, settings, setup_logging
from natsched.connection import connect
from natsched.errors import ConfigError, NatschedError
from natsched.settings import ConnectionSettings
from natsched.web.auth import Auth, check_exposure, hash_password, read_users

DEFAULT_LISTEN = "127.0.0.1:8470"
TOKEN_ENV = "NATSCHED_WEB_TOKEN"

app = typer.Typer(help="The web dashboard.", invoke_without_command=True)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {value!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {token_file}: {exc.strerror}") from None
        if len(token) < 16:
            raise ConfigError(f"token file {token_file}: the token must be at least 16 characters")
        return token
    return os.environ.get(TOKEN_ENV) or None


def web_url(listen: str = DEFAULT_LISTEN, tls: bool = False) -> str:
    host, port = parse_listen(listen)
    return f"{'https' if tls else 'http'}://{host}:{port}/"


@app.callback()
def web(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option(help="HOST:PORT to serve on (off localhost needs a login)")
    ] = DEFAULT_LISTEN,
    token_file: Annotated[
        Path | None, typer.Option(help=f"file holding the login token (or ${TOKEN_ENV})")
    ] = None,
    users: Annotated[Path | None, typer.Option(help="users file: name:scrypt$... lines")] = None,
    https_cert: Annotated[Path | None, typer.Option(help="serve HTTPS with this certificate (PEM)")] = None,
    https_key: Annotated[Path | None, typer.Option(help="the HTTPS certificate's key (PEM)")] = None,
    behind_proxy: Annotated[
        bool, typer.Option(help="a TLS reverse proxy is in front (trusts its X-Forwarded-* headers)")
    ] = False,
    actions: Annotated[
        bool, typer.Option(help="allow run/cancel/pause/enable from the browser (needs admin credentials)")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    server: ServerOption = None,
) -> None:
    """Serve the dashboard: agents, jobs, live runs, chain graphs, timelines."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from natsched.web.app import WebConfig, create_app

    setup_logging(verbose)
    try:
        host, port = parse_listen(listen)
        if (https_cert is None) != (https_key is None):
            raise ConfigError("--https-cert and --https-key go together")
        tls = https_cert is not None
        auth = Auth(
            token=_token(token_file),
            users=read_users(users) if users else {},
            secure_cookies=tls or behind_proxy,
        )
        check_exposure(host, auth, tls=tls, behind_proxy=behind_proxy)
        config = WebConfig(connection=settings(server), auth=auth, actions=actions)
        # NATS unreachable: one line and exit 1 here, not uvicorn's traceback of a failed
        # lifespan and exit 3 (the lifespan checks again, bounded too).
        asyncio.run(_can_connect(config.connection))
    except NatschedError as exc:
        raise fail(str(exc)) from None
    # uvicorn stops gracefully on SIGTERM, then raises it again with the handler it found:
    # by default that killed the process by the signal (status -15) after a clean stop.
    signal.signal(signal.SIGTERM, _exit_zero)
    console.print(f"natsched web on {'https' if tls else 'http'}://{host}:{port}/", highlight=False)
    uvicorn.run(
        create_app(config),
        host=host,
        port=port,
        ssl_certfile=str(https_cert) if https_cert else None,
        ssl_keyfile=str(https_key) if https_key else None,
        proxy_headers=behind_proxy,
        forwarded_allow_ips="*" if behind_proxy else None,
        log_level="debug" if verbose else "warning",
        timeout_graceful_shutdown=2,
    )


async def _can_connect(connection: ConnectionSettings) -> None:
    await (await connect(connection)).close()


def _exit_zero(signum: int, frame: object) -> None:
    raise SystemExit(0)


@app.command()
def password(name: Annotated[str, typer.Argument(help="user name")]) -> None:
    """Print a users-file line for NAME (asks for the password)."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise fail(f"user name {name!r}: no ':' and no spaces")
    secret = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(secret) < 8:
        raise fail("a password needs at least 8 characters")
    print(f"{name}:{hash_password(secret)}")
