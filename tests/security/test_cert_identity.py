"""An agent's identity is its client certificate (verify_and_map), not the name it claims."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import security, tls
from natsched.embedded import EmbeddedServer, free_port
from natsched.errors import ConfigError
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import BIN

IDENTITIES = ["master", "a1"]


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    return tls.generate(tmp_path / "tls", ["127.0.0.1", "localhost"], identities=IDENTITIES)


@pytest.fixture
def mapped_server(tmp_path: Path, certs: dict[str, Path]) -> Iterator[EmbeddedServer]:
    users = {"master": security.master(), "a1": security.agent("a1")}
    server = EmbeddedServer(
        data_dir=tmp_path / "nats",
        port=free_port(),
        log_file=tmp_path / "nats.log",
        extra_config=tls.server_tls_block(certs, map_users=True) + security.cert_users_block(users),
    )
    server.start()
    yield server
    server.stop()


def as_identity(server: EmbeddedServer, certs: dict[str, Path], name: str) -> ConnectionSettings:
    return ConnectionSettings(
        url=f"tls://127.0.0.1:{server.port}",
        tls_ca=str(certs["ca"]),
        tls_cert=str(certs[name]),
        tls_key=str(certs[f"{name}-key"]),
        connect_timeout=2,
    )


async def test_the_certificate_decides_which_agent_name_is_allowed(
    mapped_server: EmbeddedServer, certs: dict[str, Path], tmp_path: Path
) -> None:
    async with MasterService(as_identity(mapped_server, certs, "master")):
        agent_conn = as_identity(mapped_server, certs, "a1")

        def check(name: str) -> tuple[int, str]:
            env = {
                **os.environ,
                "NATS_URL": agent_conn.url,
                "NATS_CA": str(certs["ca"]),
                "NATS_CERT": str(certs["a1"]),
                "NATS_KEY": str(certs["a1-key"]),
            }
            result = subprocess.run(
                [str(BIN / "natsched-agent"), "--check", "--name", name, "--state-dir", str(tmp_path / name)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return result.returncode, result.stdout + result.stderr

        # Checked before a1 runs: the check refuses a name whose agent heartbeated within the TTL.
        assert check("a1")[0] == 0
        async with AgentService(AgentConfig(name="a1", state_dir=tmp_path / "a1"), agent_conn) as agent:
            await agent.synced(10)  # its own name: works end to end
        code, out = check("a2")  # a1's certificate claiming a2's name
        assert code == 1 and "FAIL credential does not allow agent name 'a2'" in out, out

        impostor = AgentService(AgentConfig(name="a2", state_dir=tmp_path / "a2"), agent_conn)
        async with impostor:  # the running agent stops itself, in one line
            with pytest.raises(ConfigError, match="credential does not allow agent name 'a2'"):
                await asyncio.wait_for(impostor.run_forever(), 15)
