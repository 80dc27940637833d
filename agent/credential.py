"""Is this agent's NATS credential allowed to be this agent?

With per-agent users (``natsched permissions``, or certificates mapped to users,
``verify_and_map``) a credential covers one agent name: its run and cancel subjects,
its heartbeat key, its events, its reply inbox. nats-server does not refuse such a subscription or
publish synchronously: it answers ``-ERR 'Permissions Violation for ...'`` and keeps the
connection, and nats-py hands that to the error callback. This watch turns a violation
on the agent's own subjects into one line that says what is wrong, so an agent started
with another agent's credential stops at once instead of running deaf and invisible.
"""

from __future__ import annotations

import asyncio
import re

from nats.aio.client import Client

from natsched import subjects

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.IGNORECASE)


class CredentialWatch:
    def __init__(self, name: str, pools: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.pools = pools
        self.denied: list[str] = []  # every violation, as the server worded it
        self.fatal = ""  # the first violation on this agent's own subjects, explained
        self.changed = asyncio.Event()  # set on every violation

    def explain(self, subject: str) -> str:
        """One line for a denied subject, naming the agent or pool it belongs to ('' if neither)."""
        # nats-py lower-cases the server's error text ("$kv.natsched_agents.a1").
        subject = subject.lower()
        own = {
            subjects.agent_run_subject(self.name).lower(),
            subjects.agent_cancel_subject(self.name).lower(),
            (subjects.kv_subject_prefix(subjects.AGENTS_BUCKET) + self.name).lower(),
        }
        prefixes = (f"natsched.event.{self.name}.".lower(), f"{subjects.agent_inbox(self.name)}.".lower())
        if subject in own or subject.startswith(prefixes):
            return f"credential does not allow agent name {self.name!r}"
        for pool in sorted(self.pools):
            if subject == subjects.pool_run_subject(pool).lower():
                return f"credential does not allow pool {pool!r} (agent {self.name!r})"
        return ""

    def last(self) -> str:
        """The latest violation, explained if it concerns this agent, else as the server said it."""
        if not self.denied:
            return ""
        message = self.denied[-1]
        match = _VIOLATION.search(message)
        return (self.explain(match.group(2)) if match else "") or f"credential does not allow it: {message}"

    async def settle(self, nc: Client, timeout: int = 10) -> None:
        """Wait until the server has answered what was sent so far, violations included.

        Two PING/PONG round trips: measured on nats-server 2.15, the -ERR of a denied SUB
        had arrived after the first PONG in 102 of 200 tries, after the second in 200.
        """
        for _ in range(2):
            await nc.flush(timeout=timeout)

    async def on_error(self, exc: Exception) -> None:
        """nats-py's error callback (chained after the connection's own logging)."""
        match = _VIOLATION.search(str(exc))
        if match is None:
            return
        self.denied.append(match.group(0))
        if not self.fatal:
            self.fatal = self.explain(match.group(2))
        self.changed.set()
