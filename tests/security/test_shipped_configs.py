"""The configs in nats/ and deploy/ are real: the server starts with them, natsched connects."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from agent.config import AgentConfig
from natsched import security, tls
from natsched.client import AdminClient
from natsched.embedded import find_binary, free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings

ROOT = Path(__file__).resolve().parents[2]


def _prepare(config: Path, target: Path, certs: dict[str, Path]) -> Path:
    """Copy a shipped config beside generated tls.conf/auth.conf, with local ports and paths."""
    target.mkdir(parents=True)
    text = config.read_text()
    text = re.sub(r'store_dir: "[^"]+"', f'store_dir: "{target / "js"}"', text)
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{free_port()}").replace(
        "127.0.0.1:8222", f"127.0.0.1:{free_port()}"
    )
    text = text.replace("0.0.0.0:6222", f"127.0.0.1:{free_port()}")
    (target / "natsched.conf").write_text(text)
    (target / "tls.conf").write_text(tls.server_tls_block(certs))
    (target / "cluster-tls.conf").write_text(tls.server_tls_block(certs).replace("  timeout: 2\n", ""))
    (target / "auth.conf").write_text(security.users_block({"natsched-master": ("pw", security.master())}))
    return target / "natsched.conf"


@pytest.mark.parametrize(
    "name", ["natsched.conf", "cluster/node1.conf", "cluster/node2.conf", "cluster/node3.conf"]
)
def test_shipped_server_configs_are_valid(name: str, tmp_path: Path) -> None:
    certs = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    config = _prepare(ROOT / "nats" / name, tmp_path / "conf", certs)
    result = subprocess.run(
        [find_binary(), "-t", "-c", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr + result.stdout


async def test_single_node_config_runs_with_tls_and_users(tmp_path: Path) -> None:
    certs = tls.generate(tmp_path / "tls", ["127.0.0.1"])
    config = _prepare(ROOT / "nats" / "natsched.conf", tmp_path / "conf", certs)
    port = re.search(r"listen: 127\.0\.0\.1:(\d+)", config.read_text())
    assert port is not None
    server = await asyncio.create_subprocess_exec(
        find_binary(), "-c", str(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        conn = ConnectionSettings(
            url=f"tls://127.0.0.1:{port.group(1)}",
            user="natsched-master",
            password="pw",
            tls_ca=str(certs["ca"]),
            tls_cert=str(certs["client"]),
            tls_key=str(certs["client-key"]),
            connect_timeout=2,
        )
        for _ in range(50):  # wait for the port
            try:
                async with MasterService(conn), AdminClient(conn) as api:
                    assert (await api.call("natsched.api.ping"))["ok"]
                break
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.1)
        else:
            pytest.fail("could not use the server started with nats/natsched.conf")
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 15)


def test_example_agent_config_loads() -> None:
    config = AgentConfig.load(file=ROOT / "deploy" / "agent.toml", env={})
    assert config.name == "db1" and config.pools == {"backup"} and config.priority == 100
