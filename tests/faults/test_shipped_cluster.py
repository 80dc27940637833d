"""The shipped 3-node cluster forms with `natsched tls init` certificates, and a leading master
survives losing the node it is connected to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from natsched import security, subjects, tls
from natsched.embedded import find_binary, free_port
from tests.conftest import Process, eventually, wait_for_api
from tests.faults.test_cluster import Cluster
from tests.helpers import api, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
NATSCHED = str(Path(sys.executable).parent / "natsched")


def _jsz(monitor: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/jsz", timeout=2) as reply:
        data: dict[str, Any] = json.loads(reply.read())
    return data


def _shipped_node(n: int, base: Path, certs: dict[str, Path], routes: dict[int, int]) -> tuple[Path, int]:
    """nats/cluster/node<n>.conf with local ports and paths; (config, monitoring port)."""
    target = base / f"node{n}"
    target.mkdir(parents=True)
    monitor = free_port()
    text = (ROOT / "nats" / "cluster" / f"node{n}.conf").read_text()
    text = re.sub(r'store_dir: "[^"]+"', f'store_dir: "{target / "js"}"', text)
    text = text.replace("0.0.0.0:4222", f"127.0.0.1:{free_port()}")
    text = text.replace("127.0.0.1:8222", f"127.0.0.1:{monitor}")
    text = text.replace("0.0.0.0:6222", f"127.0.0.1:{routes[n]}")
    for other, port in routes.items():
        text = text.replace(f"nats{other}.example.internal:6222", f"127.0.0.1:{port}")
    (target / "natsched.conf").write_text(text)
    (target / "tls.conf").write_text(tls.server_tls_block(certs))
    (target / "cluster-tls.conf").write_text(tls.route_tls_block(certs))
    (target / "auth.conf").write_text(security.users_block({"natsched-master": ("pw", security.master())}))
    return target / "natsched.conf", monitor


def test_the_shipped_cluster_forms_with_tls_init_certificates(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(Path(find_binary()).parent / "natsched"),
            "tls",
            "init",
            str(tmp_path / "tls"),
            "--host",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "cluster-tls.conf" in result.stdout, "tls init prints the routes' tls block too"
    certs = {p.stem: p for p in (tmp_path / "tls").glob("*.pem")}
    routes = {n: free_port() for n in (1, 2, 3)}
    nodes = [_shipped_node(n, tmp_path, certs, routes) for n in (1, 2, 3)]
    servers = []
    try:
        for config, _ in nodes:
            log = open(config.parent / "server.log", "wb")  # noqa: SIM115 - closed in finally
            servers.append(
                (subprocess.Popen([find_binary(), "-c", str(config)], stdout=log, stderr=log), log)
            )

        def leaders() -> set[str]:
            found = set()
            for _, monitor in nodes:
                try:
                    found.add(str(_jsz(monitor).get("meta_cluster", {}).get("leader", "")))
                except OSError:
                    found.add("")
            return found

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (len(leaders()) != 1 or "" in leaders()):
            time.sleep(0.5)
        logs = "".join((config.parent / "server.log").read_text() for config, _ in nodes)
        assert "incompatible key usage" not in logs, logs[-3000:]
        assert len(leaders()) == 1 and "" not in leaders(), f"no meta leader:\n{logs[-3000:]}"
    finally:
        for process, log in servers:
            process.terminate()
            process.wait(15)
            log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    for server in cluster.servers.values():
        server.start()
    yield cluster
    for server in cluster.servers.values():
        server.stop()


async def test_a_leading_master_survives_losing_its_node_and_scheduling_goes_on(
    cluster: Cluster, spawn: Callable[..., Process], tmp_path: Path
) -> None:
    nc = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    try:

        async def jetstream_ready() -> bool:
            try:
                await nc.jetstream().account_info()
                return bool(cluster.meta_leader("n1"))
            except Exception:  # noqa: BLE001 - electing its meta leader
                return False

        await eventually(jetstream_ready, 30, "the JetStream cluster elected a meta leader")
        # The leader is connected to n1 only (it learns the others from the cluster).
        leader = spawn(
            "natsched", "master", "--replicas", "3", "--lease-ttl", "2",
            url=cluster.servers["n1"].url, log_name="master-n1.log",
        )  # fmt: skip
        await asyncio.to_thread(wait_for_api, cluster.servers["n2"].url, leader, 30)
        # The leader's node also leads the state bucket's stream (cursors, lease): its loss
        # fails the leader's KV writes until the stream has a new leader.
        await move_stream_leader(nc, subjects.kv_stream(subjects.STATE_BUCKET), "n1")
        standby = spawn(
            "natsched", "master", "--replicas", "3", "--lease-ttl", "2",
            url=cluster.servers["n2"].url, log_name="master-n2.log",
        )  # fmt: skip
        spawn("natsched-agent", "--name", "k1", "--state-dir", str(tmp_path / "k1"), url=cluster.url)
        await eventually(lambda: _agent_joined(nc), 30, "agent k1 heartbeats")
        jobs = toml_jobs(
            job("tick", mode="slave", targets={"agents": ["k1"]}, triggers=[{"every": "1s"}]), group="cl"
        )
        assert (await api(nc, "natsched.api.apply", {"source": "cl.toml", "content": jobs}, timeout=20))["ok"]
        await eventually(lambda: _ticking_since(nc, 0), 20, "scheduled runs before the kill")
        cluster.servers["n1"].kill()  # kill -9 the node the leader is connected to
        killed_at = time.time()
        await eventually(lambda: _ticking_since(nc, killed_at + 2), 60, "scheduling continues after the kill")
        print(f"scheduling resumed {time.time() - killed_at:.1f}s after the node was killed")
        await asyncio.sleep(3)
        for master in (leader, standby):
            out = master.output()
            assert master.popen.poll() is None, f"a master exited:\n{out[-3000:]}"
            assert "crashed" not in out, out[-3000:]
    finally:
        await nc.close()


async def move_stream_leader(nc: Client, stream: str, node: str) -> None:
    for _ in range(30):
        info = await nc.jetstream().stream_info(stream)
        if info.cluster is not None and info.cluster.leader == node:
            return
        body = json.dumps({"placement": {"preferred": node}}).encode()
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
        await asyncio.sleep(1)
    pytest.fail(f"{stream} did not move its leader to {node}")


async def _agent_joined(nc: Client) -> bool:
    try:
        kv = await nc.jetstream().key_value("natsched_agents")
        await kv.get("k1")
        return True
    except Exception:  # noqa: BLE001 - not yet
        return False


async def _ticking_since(nc: Client, moment: float) -> bool:
    try:
        events = await stream_events(nc)
    except Exception:  # noqa: BLE001 - the stream's leader is moving
        return False
    return any(
        e["job"] == "cl.tick" and e["state"] == "started" and e["scheduled_at"] > moment for e in events
    )
