"""A run's environment: a clean base, the job's variables over it, ``${VAR}`` expanded here.

A job never inherits the agent's environment: the agent holds its NATS credentials
(``NATS_PASSWORD``, ``NATS_KEY`` ... from ``deploy/agent.env``) and secret-key settings,
and a job that prints its environment would put them into logs and events. A process
gets only the pass-through variables below (from the agent's environment), the job's
``env``, and ``NATSCHED_RUN_ID`` and friends.

Expansion happens on the agent (so ``${HOSTNAME}`` is each host's own) and only here:
values are never handed to a shell for expansion. The rules, deliberately few:

- ``${NAME}`` is replaced by the value NAME has at that point: the base, then the job's
  variables in the order they were written (``PATH=/opt/bin:${PATH}`` extends the
  agent's PATH; a job variable sees only the job variables before it); then any other
  agent variable, except credentials (``NATS_*``, ``NATSCHED_*`` and names that look
  like a password, token, secret or key), which expand to nothing. So a job can still
  take over a variable it needs, ``HTTPS_PROXY = "${HTTPS_PROXY}"``, by naming it.
- ``$$`` is a literal ``$``. Anything else (``$NAME``, a lone ``$``, ``${1x}``, an
  unclosed ``${``) is left as written.
- An undefined ``${X}`` expands to the empty string and its name is reported back, so
  the caller logs it: a typo should be visible, not fatal to the run.
"""

from __future__ import annotations

import re
import socket
from collections import ChainMap
from collections.abc import Iterable, Mapping
from typing import NamedTuple

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# What every process gets from the agent's environment (plus LC_*), as cron and sudo do.
PASS_THROUGH = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Agent variables that are never visible to a job, not even through ${NAME}.
_CREDENTIAL = re.compile(
    r"^(NATS_|NATSCHED_)|PASS(WORD|WD)|SECRET|TOKEN|CRED|PRIVATE|(^|_)(API)?KEY($|_)|AUTH", re.IGNORECASE
)


class Environment(NamedTuple):
    """The process environment, and the names referenced but undefined (first use first)."""

    env: dict[str, str]
    unknown: list[str]


def expand(value: str, variables: Mapping[str, str], unknown: list[str] | None = None) -> str:
    """``value`` with ``${NAME}`` and ``$$`` expanded; undefined names are appended to ``unknown``."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        found = variables.get(name)
        if found is None:
            if unknown is not None and name not in unknown:
                unknown.append(name)
            return ""
        return found

    return _REFERENCE.sub(replace, value) if "$" in value else value


def is_credential(name: str) -> bool:
    """Would a job seeing this agent variable see a credential?"""
    return bool(_CREDENTIAL.search(name))


def clean_base(agent_env: Mapping[str, str]) -> dict[str, str]:
    """The pass-through part of the agent's environment: all a job gets without asking."""
    base = {k: v for k, v in agent_env.items() if k in PASS_THROUGH or k.startswith("LC_")}
    base.setdefault("PATH", DEFAULT_PATH)
    return base


def expandable(agent_env: Mapping[str, str]) -> dict[str, str]:
    """Agent variables a job may name in ``${NAME}``: everything but credentials."""
    visible = {k: v for k, v in agent_env.items() if not is_credential(k)}
    visible.setdefault("HOSTNAME", socket.gethostname())
    return visible


class AgentVariables:
    """``clean_base`` and ``expandable`` of the agent's environment, worked out once.

    Both walk every variable (a regex per name): ~0.2 ms a run when done per run. The
    agent's environment is set when it starts; nothing in the agent changes it.
    """

    def __init__(self, source: Mapping[str, str]) -> None:
        self.base = clean_base(source)
        self.visible = expandable(source)


def build_env(
    job_env: Mapping[str, str],
    base: Mapping[str, str],
    extra: Mapping[str, str] | None = None,
    *,
    visible: Mapping[str, str] | None = None,
    literal: Mapping[str, str] | None = None,
) -> Environment:
    """The environment of a run: ``base``, then ``job_env`` expanded in order, then ``extra``.

    ``visible`` are further variables ``${NAME}`` may read without them reaching the
    process. ``literal`` (a trigger's env) replaces the job's variables of the same names
    in place, as written: a caller's value is data, never expanded, so it cannot read
    agent variables. ``extra`` (NATSCHED_RUN_ID and friends) goes last and is not
    expanded either, so a job can neither override nor inject into it.
    """
    env = dict(base)
    # The agent's variables are copied for a lookup only when a value refers to one.
    needed = any("$" in value for value in job_env.values())
    lookup: Mapping[str, str] = ChainMap(env, dict(visible or {})) if needed else env
    unknown: list[str] = []
    given = literal or {}
    for name, value in job_env.items():
        env[name] = given[name] if name in given else expand(value, lookup, unknown)
    env.update(given)
    if extra:
        env.update(extra)
    return Environment(env, unknown)


def expand_argv(
    command: tuple[str, ...],
    env: Mapping[str, str],
    visible: Mapping[str, str],
    hidden: Iterable[str] = (),
) -> tuple[tuple[str, ...], list[str]]:
    """A job's argv with ``${NAME}`` and ``$$`` expanded as in its ``env`` (no shell involved).

    Names are looked up in the run's environment, then ``visible`` (agent variables that are
    not credentials). A variable holding a secret (``hidden`` values) expands to nothing and
    is reported unknown: argv is public (``ps``), a secret only reaches a process in its
    environment. Each element stays one argument whatever the values hold.
    """
    if not any("$" in arg for arg in command):
        return command, []  # nothing to expand (most jobs): no lookup table built per run
    secrets = [value for value in hidden if value]
    lookup = {
        **{k: v for k, v in visible.items() if not any(x in v for x in secrets)},
        **{k: v for k, v in env.items() if not any(x in v for x in secrets)},
    }
    unknown: list[str] = []
    return tuple(expand(arg, lookup, unknown) for arg in command), unknown
