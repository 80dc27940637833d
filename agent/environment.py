"""A run's environment: the agent's, overlaid with the job's, ``${VAR}`` expanded here.

Expansion happens on the agent (so ``${HOSTNAME}`` is each host's own) and only here:
values are never handed to a shell for expansion. ``$$`` is a literal ``$``; an
undefined ``${X}`` expands to the empty string and is reported to the caller, which
logs it (a typo should be visible, not fatal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand(value: str, variables: Mapping[str, str], unknown: set[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in variables:
            unknown.add(name)
            return ""
        return variables[name]

    return _REFERENCE.sub(replace, value)


def build_env(
    job_env: Mapping[str, str], base: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> tuple[dict[str, str], set[str]]:
    """(environment for the process, names referenced but undefined).

    ``base`` is the agent's environment; job variables overlay it in order, each expanded
    against what is defined so far; ``extra`` (NATSCHED_RUN_ID and friends) goes last,
    unexpanded.
    """
    env = dict(base)
    unknown: set[str] = set()
    for name, value in job_env.items():
        env[name] = expand(value, env, unknown)
    if extra:
        env.update(extra)
    return env, unknown
