"""A run's environment: the agent's, overlaid with the job's, ``${VAR}`` expanded here.

Expansion happens on the agent (so ``${HOSTNAME}`` is each host's own) and only here:
values are never handed to a shell for expansion. The rules, deliberately few:

- ``${NAME}`` is replaced by the value NAME has at that point: the base environment,
  then the job's variables in the order they were written (``PATH=/opt/bin:${PATH}``
  extends the agent's PATH; a job variable sees only the job variables before it).
- ``$$`` is a literal ``$``. Anything else (``$NAME``, a lone ``$``, ``${1x}``, an
  unclosed ``${``) is left as written.
- An undefined ``${X}`` expands to the empty string and its name is reported back, so
  the caller logs it: a typo should be visible, not fatal to the run.

The base is whatever the caller passes; the agent passes its own environment, so a job
sees what the agent's service unit gives it (systemd's is already minimal), like cron.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


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


def build_env(
    job_env: Mapping[str, str], base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> Environment:
    """The environment of a run: ``base``, then ``job_env`` expanded in order, then ``extra``.

    ``extra`` (NATSCHED_RUN_ID and friends) goes last and is not expanded, so a job can
    neither override nor inject into it.
    """
    env = dict(base)
    unknown: list[str] = []
    for name, value in job_env.items():
        env[name] = expand(value, env, unknown)
    if extra:
        env.update(extra)
    return Environment(env, unknown)
