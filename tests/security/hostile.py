"""A real nats-server with natsched's generated configuration, for the attack tests.

TLS comes from ``tls.generate`` (what ``natsched tls init`` writes) and the users from the
role builders ``natsched permissions`` prints (``security.master()``, ``admin()``,
``agent()``, ``trigger()``, ``web()``): a master, an admin, agents a1 and a2 of pool ``p``
(a1 also of tag ``web``), agent a3 of no pool and no tag, a trigger user allowed ``sec.echo``
and the read-only web user. A test
connects as any of them, as a service or as a raw nats-py client doing what an attacker would.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import security, subjects, tls
from natsched.client import AdminClient
from natsched.embedded import EmbeddedServer, free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import eventually
from tests.helpers import apply, job, toml_jobs

POOL = "p"
TAG = "web"
TRIGGER_JOBS = ["sec.echo"]
USERS: dict[str, tuple[str, security.Permissions]] = {
    "natsched-master": ("m-pw", security.master()),
    "natsched-admin": ("a-pw", security.admin()),
    "agent-a1": ("a1-pw", security.agent("a1", [POOL], tags=[TAG])),
    "agent-a2": ("a2-pw", security.agent("a2", [POOL])),
    "agent-a3": ("a3-pw", security.agent("a3")),
    "natsched-trigger": ("t-pw", security.trigger(TRIGGER_JOBS)),
    "natsched-web": ("w-pw", security.web()),
}
# The inbox prefix each role's own software uses (natsched services and commands).
INBOX = {
    "natsched-master": subjects.MASTER_INBOX,
    "natsched-admin": subjects.ADMIN_INBOX,
    "agent-a1": subjects.agent_inbox("a1"),
    "agent-a2": subjects.agent_inbox("a2"),
    "agent-a3": subjects.agent_inbox("a3"),
    "natsched-trigger": subjects.TRIGGER_INBOX,
    "natsched-web": subjects.WEB_INBOX,
}


@dataclass(frozen=True, slots=True)
class Secured:
    server: EmbeddedServer
    certs: dict[str, Path]
    tmp: Path
    clients: list[Client] = field(default_factory=list)

    def settings(self, user: str) -> ConnectionSettings:
        return ConnectionSettings(
            url=f"tls://127.0.0.1:{self.server.port}",
            user=user,
            password=USERS[user][0],
            tls_ca=str(self.certs["ca"]),
            tls_cert=str(self.certs["client"]),
            tls_key=str(self.certs["client-key"]),
            connect_timeout=2,
        )

    async def connect(
        self, user: str, *, inbox: str | None = None, errors: list[str] | None = None
    ) -> Client:
        """A raw client as ``user`` (default: the role's own inbox prefix); errors collected."""

        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        context = ssl.create_default_context(cafile=str(self.certs["ca"]))
        context.load_cert_chain(str(self.certs["client"]), str(self.certs["client-key"]))
        nc = await nats.connect(
            f"tls://127.0.0.1:{self.server.port}",
            user=user,
            password=USERS[user][0],
            tls=context,
            inbox_prefix=inbox or INBOX[user],
            error_cb=on_error,
            max_reconnect_attempts=1,
        )
        self.clients.append(nc)
        return nc

    async def close(self) -> None:
        for nc in self.clients:
            await nc.close()

    @asynccontextmanager
    async def services(
        self,
        *agents: str,
        tags: dict[str, frozenset[str]] | None = None,
        pools: dict[str, frozenset[str]] | None = None,
    ) -> AsyncIterator[list[AgentService]]:
        """A master and the named agents, each under its own user, with the pools (default
        ``p``) and tags each one's configuration names."""
        async with MasterService(self.settings("natsched-master")):
            running = [
                AgentService(
                    AgentConfig(
                        name=name,
                        pools=(pools or {}).get(name, frozenset({POOL})),
                        tags=(tags or {}).get(name, frozenset()),
                        state_dir=self.tmp / name,
                        heartbeat_interval=0.3,
                    ),
                    self.settings(f"agent-{name}"),
                )
                for name in agents
            ]
            for agent in running:
                await agent.__aenter__()
            try:
                for agent in running:
                    await agent.synced(10)
                yield running
            finally:
                for agent in reversed(running):
                    await agent.__aexit__(None, None, None)


@asynccontextmanager
async def secured_server(tmp_path: Path) -> AsyncIterator[Secured]:
    certs = tls.generate(tmp_path / "tls", ["127.0.0.1", "localhost"])
    server = EmbeddedServer(
        data_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats.log",
        extra_config=tls.server_tls_block(certs) + security.users_block(USERS),
    )
    server.start()
    secured = Secured(server=server, certs=certs, tmp=tmp_path)
    try:
        yield secured
    finally:
        await secured.close()
        server.stop()


def violations(errors: list[str], subject: str) -> bool:
    """True if the server refused ``subject`` to this client (a permissions violation)."""
    return any("permissions violation" in e.lower() and subject.lower() in e.lower() for e in errors)


async def apply_subject_triggered_deploy(
    secured: Secured, admin: AdminClient, witness: Path, pattern: str
) -> JetStreamContext:
    """Apply ``sec.deploy``: a slave job on a1, triggered by subject ``pattern``, appending its
    ``$NATSCHED_SUBJECT`` to ``witness``; return a master's JetStream context once the
    subject-trigger stream listens on ``pattern``."""
    reply = await apply(
        admin.nc,
        toml_jobs(
            job(
                "deploy",
                mode="slave",
                targets={"agents": ["a1"]},
                command=["sh", "-c", f'echo "$NATSCHED_SUBJECT" >> {witness}'],
                triggers=[{"subject": pattern}],
            ),
            group="sec",
        ),
        source="sec.toml",
    )
    assert reply["ok"], reply
    js = (await secured.connect("natsched-master")).jetstream()

    async def kept() -> bool:
        return pattern in ((await js.stream_info(subjects.SUBJECTS_STREAM)).config.subjects or [])

    await eventually(kept, what=f"the subject trigger's stream listens on {pattern}")
    return js
