"""Who a job's process runs as: the job's ``user`` (the agent must be root to switch), with
HOME/USER/LOGNAME following; and why a process could not start, in one line.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from typing import Any

from natsched.errors import RunError


def run_as(user: str | None, env: Mapping[str, str]) -> tuple[dict[str, Any], Mapping[str, str]]:
    """subprocess arguments that run as ``user``, and the environment adjusted to match."""
    if user is None:
        return {}, env
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, OverflowError):
        raise RunError(f"job asks to run as unknown user {user!r}") from None
    euid = os.geteuid()
    if entry.pw_uid == euid:
        return {}, env
    if euid != 0:
        raise RunError(f"job asks to run as {user!r} but the agent does not run as root")
    # The agent's own HOME/USER would point the job at root's files; values the job set stay.
    agent = pwd.getpwuid(euid)
    adjusted = dict(env)
    for key, ours, theirs in (
        ("HOME", agent.pw_dir, entry.pw_dir),
        ("USER", agent.pw_name, entry.pw_name),
        ("LOGNAME", agent.pw_name, entry.pw_name),
    ):
        if adjusted.get(key) in (None, ours, os.environ.get(key)):
            adjusted[key] = theirs
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": groups}, adjusted


def start_failure(exc: OSError, program: str, cwd: str | None) -> str:
    if cwd is not None and exc.filename == cwd:
        if isinstance(exc, FileNotFoundError):
            return f"working directory not found: {cwd!r}"
        return f"cannot enter working directory {cwd!r}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {program!r}"
    return f"cannot start {program!r}: {exc.strerror or exc}"
