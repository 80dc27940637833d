"""The ``natsched`` command: one typer app, command groups added with add_typer."""

from __future__ import annotations

from typing import Annotated

import typer

from natsched import __version__
from natsched.cli import common
from natsched.cli.agents import agents
from natsched.cli.apply import apply
from natsched.cli.calendars import app as calendars_app
from natsched.cli.calendars import pause, resume
from natsched.cli.groups import app as settings_app
from natsched.cli.jobs import app as jobs_app
from natsched.cli.run import cancel, run_job
from natsched.cli.runs import app as runs_app
from natsched.cli.runs import logs
from natsched.cli.secret_commands import app as secrets_app
from natsched.cli.security import permissions, tls_app
from natsched.cli.services import agent, master_app
from natsched.cli.status import status
from natsched.cli.syncreport import sync, sync_report
from natsched.cli.up import up
from natsched.cli.web import app as web_app

app = typer.Typer(
    name="natsched",
    help="A distributed, event-driven job scheduler built on NATS.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        common.console.print(f"natsched {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    server: common.ServerOption = None,
    creds: common.CredsOption = None,
    user: common.UserOption = None,
    password: common.PasswordOption = None,
    token: common.TokenOption = None,
    nkey: common.NkeyOption = None,
    tls_ca: common.CaOption = None,
    tls_cert: common.CertOption = None,
    tls_key: common.KeyOption = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Connection options here apply to every command (flags win over NATS_* variables)."""
    common.GlobalOptions.overrides = {
        "url": server,
        "creds": creds,
        "user": user,
        "password": password,
        "token": token,
        "nkey_seed": nkey,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
    }


app.command()(up)
app.command()(apply)
app.command()(agents)
app.add_typer(jobs_app, name="jobs")
app.add_typer(runs_app, name="runs")
app.command()(logs)
app.command("run")(run_job)
app.command()(cancel)
app.add_typer(tls_app, name="tls")
app.command()(permissions)
app.add_typer(master_app, name="master")
app.add_typer(calendars_app, name="calendars")
app.add_typer(secrets_app, name="secrets")
app.add_typer(settings_app, name="settings")
app.command()(status)
app.command("sync-report")(sync_report)
app.command()(sync)
app.add_typer(web_app, name="web")
app.command()(pause)
app.command()(resume)
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)(agent)


def main() -> None:
    app()
