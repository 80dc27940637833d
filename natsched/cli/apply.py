"""``natsched apply -f FILE``: send a job file to the master, show what changed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from natsched import subjects
from natsched.cli.common import ServerOption, console, fail, run, settings
from natsched.client import AdminClient
from natsched.errors import JobFileError
from natsched.jobfile import detect_format
from natsched.settings import ConnectionSettings


def read_job_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError:
        raise JobFileError("not UTF-8 text", source=str(path)) from None


async def send_apply(
    conn: ConnectionSettings, source: str, content: str, *, prune: bool, dry_run: bool
) -> dict[str, Any]:
    """Send a whole job file to the master; it validates everything before writing anything."""
    async with AdminClient(conn) as api:
        return await api.call(
            subjects.API_APPLY,
            {
                "source": source,
                "content": content,
                "format": detect_format(source, content),
                "prune": prune,
                "dry_run": dry_run,
            },
        )


def print_result(result: dict[str, Any]) -> None:
    marks = {"created": ("+", "green"), "updated": ("~", "yellow"), "deleted": ("-", "red")}
    changes = result.get("changes", {})
    for kind, (mark, colour) in marks.items():
        for key in result.get(kind, []):
            what = escape("; ".join(changes.get(key, [])))
            console.print(
                f"[{colour}]{mark} {key}[/]" + (f": {what}" if what else f" ({kind})"),
                highlight=False,
                markup=True,
            )
    counts = ", ".join(
        f"{len(result.get(k, []))} {k}" for k in ("created", "updated", "unchanged", "deleted")
    )
    prefix = "dry run, nothing written: " if result.get("dry_run") else ""
    console.print(f"{prefix}{counts}", highlight=False)


def apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="job file (TOML or JSON)")],
    prune: Annotated[
        bool, typer.Option(help="delete jobs of the file's groups that the file no longer has")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show the changes, write nothing")] = False,
    server: ServerOption = None,
) -> None:
    """Apply a job file: the master validates every job first and writes nothing if one is wrong."""
    try:
        content = read_job_file(file)
    except JobFileError as exc:
        raise fail(str(exc)) from None
    print_result(run(send_apply(settings(server), str(file), content, prune=prune, dry_run=dry_run)))
