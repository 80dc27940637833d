"""Job files: TOML (or JSON) documents holding jobs of one or more groups.

A file looks like this (``group`` at the top is the default for its jobs)::

    group = "backup"

    [[jobs]]
    name = "nightly"
    command = ["/usr/local/bin/backup", "--all"]
    targets = { tags = ["db"] }
    triggers = [{ cron = "0 2 * * *", timezone = "Europe/Berlin" }]

Every job is validated and *all* errors are collected, so one apply shows everything
that is wrong at once; nothing is written unless the whole file is valid.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from natsched import codec
from natsched.errors import CodecError, JobFileError, SpecError
from natsched.jobspec import parse_job
from natsched.models import JobSpec

_TOP_LEVEL = frozenset({"group", "jobs"})


@dataclass(frozen=True, kw_only=True, slots=True)
class JobFile:
    """The valid jobs of one file and the groups it speaks for (what --prune may delete in)."""

    source: str
    jobs: tuple[JobSpec, ...]
    groups: frozenset[str]


def detect_format(source: str, content: str) -> str:
    """``"json"`` for *.json or content that starts like a JSON object, else ``"toml"``."""
    if source.endswith(".json") or content.lstrip().startswith("{"):
        return "json"
    return "toml"


def _decode(content: str, fmt: str, source: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(content) if fmt == "json" else tomllib.loads(content)
        # Bounded depth and no NUL anywhere, before any validation recurses into it.
        codec.check_strict(doc, "the document")
    except CodecError as exc:
        raise JobFileError(str(exc), source=source) from None
    except ValueError as exc:  # a decode error, or an int of more than 4300 digits
        raise JobFileError(f"not valid {fmt.upper()}: {str(exc)[:200]}", source=source) from None
    except RecursionError:
        raise JobFileError(f"not valid {fmt.upper()}: nested too deeply", source=source) from None
    if not isinstance(doc, dict):
        raise JobFileError("the document must be a table/object with a 'jobs' list", source=source)
    return doc


def parse_job_document(content: str, *, source: str, fmt: str | None = None) -> JobFile:
    """Parse and validate a whole job file; raise :class:`JobFileError` listing every error."""
    doc = _decode(content, fmt or detect_format(source, content), source)
    unknown = sorted(set(doc) - _TOP_LEVEL)
    if unknown:
        raise JobFileError(
            f"unknown top-level key(s) {', '.join(unknown)}; expected 'group' and [[jobs]]", source=source
        )
    default_group = doc.get("group")
    if default_group is not None and not isinstance(default_group, str):
        raise JobFileError("top-level 'group' must be a string", source=source, field="group")
    entries = doc.get("jobs", [])
    if not isinstance(entries, list):
        raise JobFileError("'jobs' must be a list of tables ([[jobs]])", source=source, field="jobs")

    jobs: list[JobSpec] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        try:
            spec = parse_job(entry, default_group=default_group, source=source)
        except SpecError as exc:
            if not exc.job:
                exc = SpecError(exc.message, source=source, job=f"#{index}", field=exc.field)
            errors.append(str(exc))
            continue
        if spec.key in seen:
            errors.append(
                str(SpecError(f"defined twice (also job #{seen[spec.key]})", source=source, job=spec.key))
            )
            continue
        seen[spec.key] = index
        jobs.append(spec)
    if errors:
        error = JobFileError(
            f"{len(errors)} invalid job definition(s):\n  " + "\n  ".join(errors), source=source
        )
        error.errors = errors
        raise error
    groups = {spec.group for spec in jobs}
    if default_group is not None:
        groups.add(default_group)
    return JobFile(source=source, jobs=tuple(jobs), groups=frozenset(groups))


def load_job_file(path: str | Path) -> JobFile:
    """Read and parse a job file from disk."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JobFileError(f"cannot read: {exc.strerror}", source=str(path)) from None
    except UnicodeDecodeError:
        raise JobFileError("not UTF-8 text", source=str(path)) from None
    return parse_job_document(content, source=str(path))
