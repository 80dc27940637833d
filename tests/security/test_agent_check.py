"""``natsched-agent --check``: ready against a real server; one clear failing line otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from natsched.embedded import EmbeddedServer, free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import BIN
from tests.security.test_permissions import USERS, secured  # noqa: F401 - the fixture

__all__ = ["secured"]


def check(tmp_path: Path, url: str, *args: str, **env: str) -> tuple[int, str]:
    result = subprocess.run(
        [str(BIN / "natsched-agent"), "--check", "--state-dir", str(tmp_path / "state"), *args],
        env={**os.environ, "NATS_URL": url, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


async def test_check_passes_against_a_running_server(
    master: MasterService, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    code, out = check(tmp_path, nats_server.url, "--name", "ready1")
    assert code == 0, out
    assert "ok   read the jobs bucket" in out and "ok   subscribed to natsched.agent.ready1.run" in out
    assert out.strip().endswith("agent ready1 is ready")


def test_check_fails_in_one_line_on_a_dead_port(tmp_path: Path) -> None:
    code, out = check(tmp_path, f"nats://127.0.0.1:{free_port()}", "--name", "lonely")
    assert code == 1
    assert out.strip().splitlines()[-1].startswith("FAIL cannot reach NATS at nats://127.0.0.1:"), out


async def test_check_fails_on_a_wrong_password_and_on_another_agents_name(
    secured: EmbeddedServer,  # noqa: F811 - pytest fixture
    tmp_path: Path,
) -> None:
    async with MasterService(ConnectionSettings(url=secured.url, user="master", password=USERS["master"][0])):
        code, out = check(tmp_path, secured.url, "--name", "a1", NATS_USER="a1", NATS_PASSWORD="wrong")
        assert code == 1 and "FAIL NATS at" in out and "refused the connection" in out, out
        code, out = check(tmp_path, secured.url, "--name", "a1", NATS_USER="a1", NATS_PASSWORD=USERS["a1"][0])
        assert code == 0, out
        code, out = check(tmp_path, secured.url, "--name", "a2", NATS_USER="a1", NATS_PASSWORD=USERS["a1"][0])
        assert code == 1 and "FAIL credential does not allow agent name 'a2'" in out, out
