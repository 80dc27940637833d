"""What a trigger caller may change about a run: the job's ``trigger`` policy.

Anyone allowed to publish ``natsched.trigger.<job>`` can start the job, and the agent
often runs as root; so the trigger body can only change what the job's definition
opens up, and nothing by default::

    trigger = { env = ["TARGET"], args = true }

Names that change how a program or its interpreter starts (``BASH_ENV``, ``LD_PRELOAD``,
``PATH``, ``PYTHONSTARTUP`` ...) can never be opened up: a job naming one is refused at
apply, and a trigger setting one is refused by the master *and* by the agent (the last
line: a run request may come from anyone allowed to dispatch).

Runs that natsched itself starts from a message (subject triggers) carry the message in
``NATSCHED_MESSAGE`` and ``NATSCHED_SUBJECT``; only those runs may set them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from natsched.errors import SpecError, TriggerRefusedError
from natsched.vocab import RunTrigger

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Each of these makes a shell, the dynamic loader or an interpreter run code or load
# files the caller chooses, or redirects where programs are found.
NEVER_FROM_TRIGGER = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        "CDPATH",
        "GLOBIGNORE",
        "PATH",
        "HOME",
        "SHELL",
        "TMPDIR",
        "PERL5LIB",
        "PERL5OPT",
        "PERLLIB",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "CLASSPATH",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "SSH_ASKPASS",
        "EDITOR",
        "VISUAL",
        "PAGER",
    }
)
NEVER_PREFIXES = ("LD_", "DYLD_", "BASH_FUNC_", "PYTHON", "GIT_", "NATSCHED_", "NATS_")
# Set by natsched for runs started from a subject message, never by a caller.
SUBJECT_ENV = frozenset({"NATSCHED_MESSAGE", "NATSCHED_SUBJECT"})


def never_allowed(name: str) -> bool:
    """Is ``name`` a variable no trigger may set, whatever the job says?"""
    upper = name.upper()
    return upper in NEVER_FROM_TRIGGER or upper.startswith(NEVER_PREFIXES)


@dataclass(frozen=True, kw_only=True, slots=True)
class TriggerPolicy:
    """What a trigger body may change: these ``env`` names, and whether it may append ``args``."""

    env: tuple[str, ...] = ()
    args: bool = False

    def __post_init__(self) -> None:
        for name in self.env:
            if not _NAME.match(name):
                raise SpecError(f"{name!r} is not a variable name", field="trigger.env")
            if never_allowed(name):
                raise SpecError(
                    f"{name} changes how programs start (or belongs to natsched); a trigger may never set it",
                    field="trigger.env",
                )
        if len(set(self.env)) != len(self.env):
            raise SpecError("names a variable twice", field="trigger.env")

    def check(self, job: str, trigger: RunTrigger, args: tuple[str, ...], env: Mapping[str, str]) -> None:
        """Raise :class:`TriggerRefusedError` (one line, naming the field) unless allowed."""
        if args and not self.args:
            raise TriggerRefusedError(
                f"job {job} takes no args from a trigger (its definition would need trigger.args = true)",
                field="args",
            )
        for name in env:
            if trigger == RunTrigger.SUBJECT and name in SUBJECT_ENV:
                continue
            if never_allowed(name):
                raise TriggerRefusedError(
                    f"{name} changes how programs start; never accepted from a trigger", field=f"env.{name}"
                )
            if name not in self.env:
                allowed = ", ".join(self.env) or "none"
                raise TriggerRefusedError(
                    f"job {job} does not let a trigger set {name} (trigger.env allows: {allowed})",
                    field=f"env.{name}",
                )
