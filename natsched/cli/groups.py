"""``natsched settings set|show|delete``: a group's replicated settings (natsched_settings)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from natsched import subjects
from natsched.cli.common import ServerOption, call_api, console, fail, run
from natsched.cli.run import env_pairs
from natsched.errors import ConfigError
from natsched.jobspec import notify_target

app = typer.Typer(
    help="A group's replicated settings: replication strict|easy, env, user, cwd, notify, output_limit.",
    no_args_is_help=True,
)
GroupArg = Annotated[str, typer.Argument(help="group name")]


@app.command("set")
def set_settings(
    group: GroupArg,
    replication: Annotated[
        str | None,
        typer.Option(
            help="strict: only the master's jobs; easy (default): agents' local jobs kept, newer wins"
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="set the layer for agents with this tag: env, user, cwd, output limit")
    ] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="NAME=value (repeatable)")] = None,
    user: Annotated[str | None, typer.Option(help="default user of the group's jobs")] = None,
    cwd: Annotated[str | None, typer.Option(help="default working directory of the group's jobs")] = None,
    notify: Annotated[
        list[str] | None,
        typer.Option(help="where to tell about runs of jobs without notify: URL, e-mail or subject"),
    ] = None,
    notify_on: Annotated[
        list[str] | None, typer.Option(help="outcomes --notify hears (default: failure, lost, chain_failed)")
    ] = None,
    output_limit: Annotated[
        str | None, typer.Option(help="output kept per run for jobs without their own (e.g. 16MiB)")
    ] = None,
    server: ServerOption = None,
) -> None:
    """Set (replace) a group's settings; every agent applies them, also while NATS is down."""
    try:
        settings: dict[str, Any] = {"env": env_pairs(env)}
    except ConfigError as exc:
        raise fail(str(exc)) from None
    settings.update({k: v for k, v in (("replication", replication), ("user", user), ("cwd", cwd)) if v})
    if notify:
        settings["notify"] = [notify_target(target, notify_on) for target in notify]
    if output_limit is not None:
        settings["output_limit"] = output_limit
    body = {"group": group, "settings": settings, **({"tag": tag} if tag else {})}
    result = run(call_api(server, subjects.API_SETTINGS_SET, body))
    console.print(f"{_title(result['settings'])}: {_describe(result['settings'])}", highlight=False)


@app.command()
def show(
    group: Annotated[str | None, typer.Argument(help="group name (default: every group)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    server: ServerOption = None,
) -> None:
    """Show group settings."""
    result = run(call_api(server, subjects.API_SETTINGS_GET, {"group": group} if group else {}))
    if as_json:
        console.print_json(json.dumps(result["groups"]))
        return
    for entry in result["groups"]:
        console.print(f"{_title(entry)}: {_describe(entry)}", highlight=False)
    if not result["groups"]:
        console.print("no group settings (every group: replication easy)", highlight=False)


@app.command()
def delete(
    group: GroupArg,
    tag: Annotated[str | None, typer.Option(help="delete only the layer for agents with this tag")] = None,
    server: ServerOption = None,
) -> None:
    """Delete a group's settings (back to the defaults: replication easy, nothing else)."""
    body = {"group": group, **({"tag": tag} if tag else {})}
    run(call_api(server, subjects.API_SETTINGS_DELETE, body))
    console.print(f"{_title(body)}: settings deleted", highlight=False)


def _title(entry: dict[str, Any]) -> str:
    return f"group {entry['group']}" + (f" tag {entry['tag']}" if entry.get("tag") else "")


def _describe(entry: dict[str, Any]) -> str:
    if "invalid" in entry:
        return f"invalid: {entry['invalid']}"
    parts = [f"replication {entry['replication']}"] if "replication" in entry else []
    parts += [f"{k}={v}" for k, v in sorted(entry.get("env", {}).items())]
    parts += [f"{k} {entry[k]}" for k in ("user", "cwd", "output_limit") if k in entry]
    for target in entry.get("notify", []):
        where = " ".join(target[k] for k in ("webhook", "email", "subject") if k in target)
        parts.append(f"notify {where} on {'/'.join(target.get('on', []))}")
    return ", ".join(parts) or "nothing set"
