"""A 3-node JetStream cluster (replicas 3): kill the meta leader, scheduling goes on."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from agent.config import AgentConfig
from agent.service import AgentService
from natsched import subjects
from natsched.buckets import StorageSettings
from natsched.embedded import EmbeddedServer, free_port
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from tests.conftest import eventually
from tests.helpers import api, job, stream_events, toml_jobs

pytestmark = pytest.mark.faults
NODES = ("n1", "n2", "n3")
DEFINITIONS = 50


class Cluster:
    def __init__(self, base: Path) -> None:
        routes = {name: free_port() for name in NODES}
        self.monitor = {name: free_port() for name in NODES}
        self.servers: dict[str, EmbeddedServer] = {}
        for name in NODES:
            others = ", ".join(f"nats://127.0.0.1:{routes[o]}" for o in NODES if o != name)
            self.servers[name] = EmbeddedServer(
                data_dir=base / name,
                port=free_port(),
                log_file=base / f"{name}.log",
                extra_config=(
                    f"server_name: {name}\nhttp: 127.0.0.1:{self.monitor[name]}\n"
                    f"cluster {{\n  name: natsched-test\n  listen: 127.0.0.1:{routes[name]}\n"
                    f"  routes: [{others}]\n}}\n"
                ),
            )

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers.values())

    def meta_leader(self, alive: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor[alive]}/jsz", timeout=2) as reply:
            jsz: dict[str, Any] = json.loads(reply.read())
        return str(jsz.get("meta_cluster", {}).get("leader", ""))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path)
    for server in cluster.servers.values():
        server.start()
    yield cluster
    for server in cluster.servers.values():
        server.stop()


@pytest.fixture
async def cluster_nc(cluster: Cluster) -> AsyncIterator[Client]:
    client = await nats.connect(cluster.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    yield client
    await client.close()


async def test_killing_the_meta_leader_keeps_scheduling_and_loses_no_definition(
    cluster: Cluster, cluster_nc: Client, tmp_path: Path
) -> None:
    async def jetstream_ready() -> bool:
        try:
            await cluster_nc.jetstream().account_info()
            return bool(cluster.meta_leader("n1"))
        except Exception:  # noqa: BLE001 - electing its meta leader
            return False

    await eventually(jetstream_ready, 30, "the JetStream cluster elected a meta leader")
    conn = ConnectionSettings(url=cluster.url, connect_timeout=5.0)
    async with (
        MasterService(conn, storage=StorageSettings(replicas=3)),
        AgentService(
            AgentConfig(name="k1", state_dir=tmp_path / "k1", heartbeat_interval=0.5), conn
        ) as agent,
    ):
        await agent.synced(20)
        jobs = [job("tick", mode="slave", targets={"agents": ["k1"]}, triggers=[{"every": "1s"}])]
        jobs += [job(f"def{i}", mode="slave", targets={"agents": ["k1"]}) for i in range(DEFINITIONS - 1)]
        reply = await api(
            cluster_nc,
            subjects.API_APPLY,
            {"source": "cl.toml", "content": toml_jobs(*jobs, group="cl")},
            timeout=20,
        )
        assert reply["ok"], reply
        info = await cluster_nc.jetstream().stream_info(subjects.kv_stream(subjects.JOBS_BUCKET))
        assert info.config.num_replicas == 3

        async def ticking_since(moment: float) -> bool:
            try:
                events = await stream_events(cluster_nc)
            except Exception:  # noqa: BLE001 - the stream's leader is moving
                return False
            return any(
                e["job"] == "cl.tick" and e["state"] == "started" and e["scheduled_at"] > moment
                for e in events
            )

        await eventually(lambda: ticking_since(0), 15, "scheduled runs before the kill")
        leader = cluster.meta_leader("n1")
        cluster.servers[leader].kill()  # kill -9 the JetStream meta leader
        killed_at = time.time()
        alive = next(n for n in NODES if n != leader)

        async def new_meta_leader() -> bool:
            try:
                return cluster.meta_leader(alive) not in ("", leader)
            except OSError:
                return False

        await eventually(new_meta_leader, 30, "a new meta leader")
        await eventually(lambda: ticking_since(killed_at + 2), 60, "scheduling continues after the kill")
        listed: dict[str, Any] = {}

        async def listed_all() -> bool:
            # Right after the kill the bucket's stream may still be electing its leader: the
            # master then answers "not ready" (not ok); the definitions are counted once it answers.
            nonlocal listed
            listed = await api(cluster_nc, subjects.API_JOBS_LIST, {"group": "cl"}, timeout=20)
            return bool(listed.get("ok"))

        await eventually(listed_all, 60, "the master lists the jobs again")
        assert len(listed["jobs"]) == DEFINITIONS, "no definition lost"
