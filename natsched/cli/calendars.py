"""``natsched calendars set|list|delete`` and ``natsched pause|resume`` (maintenance mode)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from natsched.calendars import parse_calendar
from natsched.cli.common import ServerOption, call_api, console, run
from natsched.errors import ConfigError, SpecError
from natsched.subjects import (
    API_CALENDARS_DELETE,
    API_CALENDARS_LIST,
    API_CALENDARS_SET,
    API_PAUSE,
    API_RESUME,
)

app = typer.Typer(
    help="Named calendars (holidays, business days, windows) jobs run on or skip.", no_args_is_help=True
)


def _read_calendars(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        doc = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    calendars = doc.get("calendars") if isinstance(doc, dict) else None
    if not isinstance(calendars, list) or not all(isinstance(c, dict) for c in calendars):
        raise ConfigError(f"{path}: expected [[calendars]] tables (name, dates, weekdays, windows, timezone)")
    return calendars


@app.command("set")
def set_calendars(
    file: Annotated[Path, typer.Option("--file", "-f", help="TOML/JSON with [[calendars]]")],
    server: ServerOption = None,
) -> None:
    """Create or replace the calendars of a file (all checked before any is written)."""
    calendars = _read_calendars(file)
    for data in calendars:
        try:
            parse_calendar(data)
        except SpecError as exc:
            raise typer.BadParameter(f"{file}: calendar {data.get('name', '?')!r}: {exc}") from None
    for data in calendars:
        reply = run(call_api(server, API_CALENDARS_SET, {"calendar": data}))
        console.print(f"calendar {reply['calendar']} set", highlight=False)


@app.command("list")
def list_calendars(
    as_json: Annotated[bool, typer.Option("--json")] = False, server: ServerOption = None
) -> None:
    """Calendars, and what is paused."""
    reply = run(call_api(server, API_CALENDARS_LIST, {}))
    if as_json:
        console.print_json(json.dumps(reply))
        return
    table = Table("calendar", "timezone", "dates", "weekdays", "windows", box=None)
    for cal in reply["calendars"]:
        dates = cal["dates"]
        shown = ", ".join(dates[:4]) + (f" (+{len(dates) - 4})" if len(dates) > 4 else "")
        table.add_row(
            cal["name"], cal["timezone"], shown, ",".join(cal["weekdays"]), str(len(cal["windows"]))
        )
    console.print(table)
    for key, pause in reply["pauses"].items():
        console.print(
            f"paused: {key.split('.', 2)[2]} ({key.split('.')[1]}, {pause['mode']}) {pause.get('note', '')}"
        )


@app.command("delete")
def delete_calendar(name: str, server: ServerOption = None) -> None:
    """Delete a calendar no job uses."""
    reply = run(call_api(server, API_CALENDARS_DELETE, {"name": name}))
    console.print(f"calendar {reply['deleted']} deleted", highlight=False)


def _target(job: str | None, agent: str | None) -> dict[str, str]:
    if bool(job) == bool(agent):
        raise typer.BadParameter("give a job (<group>.<job>) or --agent NAME")
    return {"job": job} if job else {"agent": str(agent)}


def pause(
    job: Annotated[str | None, typer.Argument(help="<group>.<job>")] = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="pause a whole agent instead")] = None,
    queue: Annotated[bool, typer.Option("--queue", help="keep held runs and start them on resume")] = False,
    note: Annotated[str, typer.Option(help="why (shown in skipped runs)")] = "",
    server: ServerOption = None,
) -> None:
    """Maintenance mode: hold back every run of a job, or on an agent, but manual ones."""
    body = {**_target(job, agent), "mode": "queue" if queue else "skip", "note": note}
    reply = run(call_api(server, API_PAUSE, body))
    console.print(f"{reply['paused']} paused ({reply['mode']})", highlight=False)


def resume(
    job: Annotated[str | None, typer.Argument(help="<group>.<job>")] = None,
    agent: Annotated[str | None, typer.Option("--agent", "-a")] = None,
    server: ServerOption = None,
) -> None:
    """Lift a pause; queued runs start now."""
    reply = run(call_api(server, API_RESUME, _target(job, agent)))
    console.print(f"{reply['resumed']} resumed", highlight=False)
