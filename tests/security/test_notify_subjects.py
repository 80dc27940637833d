"""Notification subjects of the operator's own under the generated permissions.

A master's role may publish only natsched's subjects, so a job's ``notify.subject`` (e.g.
``ops.alerts``) and an agent's ``sync_notify`` subject were refused by nats-server
(a permissions violation, nothing delivered) in any deployment using ``natsched
permissions``. ``--notify-subject`` names where they may publish; anything of natsched's,
JetStream's or the reply inboxes is refused there, since agents get it too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import security
from natsched.embedded import EmbeddedServer, free_port
from natsched.errors import ConfigError
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.helpers import apply, job, toml_jobs

NOTIFY = ["ops.alerts"]
USERS = {
    "master": ("m-secret", security.master(notify_subjects=NOTIFY)),
    "admin": ("a-secret", security.admin()),
    "a1": ("agent-secret", security.agent("a1", notify_subjects=NOTIFY)),
    "plain": ("p-secret", security.master()),  # generated without --notify-subject
    "ops": ("o-secret", security.Permissions(subscribe=["ops.>"])),  # the operator's listener
}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(
        data_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats.log",
        extra_config=security.users_block(USERS),
    )
    server.start()
    yield server
    server.stop()


def settings(server: EmbeddedServer, user: str) -> ConnectionSettings:
    return ConnectionSettings(url=server.url, user=user, password=USERS[user][0], connect_timeout=2)


async def test_masters_and_agents_publish_notifications_on_the_subjects_named(
    secured: EmbeddedServer, tmp_path: Path
) -> None:
    heard: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_alert(msg: Msg) -> None:
        heard.put_nowait(json.loads(msg.data))

    ops = await nats.connect(secured.url, user="ops", password="o-secret")
    admin = await nats.connect(secured.url, user="admin", password="a-secret", inbox_prefix="_INBOX_admin")
    try:
        await ops.subscribe("ops.alerts", cb=on_alert)
        await ops.flush()
        async with MasterService(settings(secured, "master")):
            config = AgentConfig(name="a1", state_dir=tmp_path / "a1", sync_notify=frozenset(NOTIFY))
            async with AgentService(config, settings(secured, "a1")) as agent:
                await agent.synced(10)
                async with asyncio.timeout(10):  # the agent's first full resync, reported
                    assert (await heard.get())["agent"] == "a1"
                failing = job(
                    "fails",
                    command=["false"],
                    targets={"agents": ["a1"]},
                    mode="slave",
                    notify=[{"on": ["failure"], "subject": "ops.alerts"}],
                )
                assert (await apply(admin, toml_jobs(failing, group="ntf")))["ok"]
                await admin.request("natsched.trigger.ntf.fails", b"{}", timeout=10)
                async with asyncio.timeout(15):
                    while "ntf.fails" not in json.dumps(alert := await heard.get()):
                        pass
                assert alert["state"] == "failed"
    finally:
        await ops.close()
        await admin.close()


async def test_without_the_option_the_server_refuses_a_notification_subject(secured: EmbeddedServer) -> None:
    """The gap the option closes: the default master role cannot publish there."""
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower() and "ops.alerts" in str(exc):
            refused.set()

    plain = await nats.connect(secured.url, user="plain", password="p-secret", error_cb=on_error)
    try:
        await plain.publish("ops.alerts", b"{}")
        await plain.flush()
        async with asyncio.timeout(5):
            await refused.wait()
    finally:
        await plain.close()


@pytest.mark.parametrize(
    "pattern", ["natsched.x", "natsched.>", "$KV.natsched_jobs.>", "$JS.API.>", "_INBOX.x", "_INBOX_admin.>",
                "*.alerts", ">", "ops.>.x", "ops.a*", "ops..x", "ops alerts", "ops\talerts", ""],
)  # fmt: skip
def test_a_notify_subject_of_natscheds_own_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError, match="--notify-subject"):
        security.master(notify_subjects=[pattern])
    with pytest.raises(ConfigError, match="--notify-subject"):
        security.agent("a1", notify_subjects=[pattern])


def test_operator_subjects_are_granted_as_given() -> None:
    master = security.master(notify_subjects=["ops.alerts", "ops.>"], trigger_subjects=["orders.*"])
    assert {"ops.alerts", "ops.>"} <= set(master.publish) and "orders.*" in master.subscribe
    assert "orders.*" not in master.publish and "ops.>" not in master.subscribe
    agent = security.agent("a1", notify_subjects=["ops.sync"])
    assert "ops.sync" in agent.publish and "ops.sync" not in agent.subscribe


def test_the_command_prints_the_subjects_and_refuses_ones_of_natscheds_own(tmp_path: Path) -> None:
    natsched = str(Path(sys.executable).parent / "natsched")
    base = [natsched, "permissions", "--agent", "a1", "--credentials-dir", str(tmp_path / "creds")]
    done = subprocess.run(
        [*base, "--notify-subject", "ops.alerts", "--trigger-subject", "orders.*"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"ops.alerts"') == 2 and done.stdout.count('"orders.*"') == 1  # master, a1
    refused = subprocess.run(
        [*base, "--notify-subject", "$KV.natsched_jobs.>"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and not refused.stdout
    assert "--notify-subject '$KV.natsched_jobs.>'" in refused.stderr and "Traceback" not in refused.stderr
