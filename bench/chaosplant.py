"""The chaos run's plant: nats-server(s), two masters and three agents as real processes, the
events they publish as they arrive, and who leads (see bench/chaos.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg

from bench.chaosledger import GROUP, Healed
from natsched.cli.masters import collect_masters
from natsched.embedded import EmbeddedServer, free_port
from natsched.settings import ConnectionSettings

BIN = Path(sys.executable).parent
LEASE_TTL = 2.0
UNRESPONSIVE = 3.0
AGENT_FREEZE = 6.5  # past the master's 5 s dispatch timeout
FAULTS = (
    "kill_leader",
    "stop_leader",
    "kill_agent",
    "stop_agent",
    "restart_nats",
    "duplicate_agent",
    "kill_master_after_upstream",
)
CLUSTER_FAULTS = ("restart_leader_node",)  # only with --cluster
LONG_FAULTS = ("twin_after_freeze", "stop_nats")  # only in runs of 120 s or more (not CI's)


class Plant:
    """The processes of one chaos run (servers, masters, agents), what they publish, who leads."""

    def __init__(
        self,
        root: Path,
        seed: int,
        say: Callable[[str], None] = print,
        cluster: bool = False,
        only: tuple[str, ...] = (),
    ) -> None:
        self.only = only  # these faults only (e.g. to repeat one kind), else every kind
        self.root = root
        self.seed = seed
        self.rng = random.Random(seed)
        self.say = say
        self.witness = root / "witness"
        self.witness.mkdir(parents=True, exist_ok=True)
        self.servers = _servers(root, cluster)
        self.url = ",".join(server.url for server in self.servers)
        self.replicas = "3" if cluster else "1"
        self.env = {
            **os.environ,
            "NATSCHED_AGENT_HEARTBEAT_INTERVAL": "0.5",
            "NATSCHED_AGENT_SYNC_CHECK_INTERVAL": "0.5",
        }
        self.masters: dict[str, subprocess.Popen[bytes]] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._log = open(root / "services.log", "ab")  # noqa: SIM115 - closed in stop()
        self.arrivals: list[tuple[float, dict[str, Any]]] = []  # (received at, event)
        self.healed: list[Healed] = []
        self.duplicates_accepted = 0
        self.revived: list[str] = []
        self.state_dirs: dict[str, str] = {}  # an agent's state directory, when not root/<name>

    # --- processes -----------------------------------------------------------------
    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self.env["NATS_URL"] = self.url
        return subprocess.Popen(
            argv, env=self.env, stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL
        )

    def start_master(self, name: str) -> None:
        self.masters[name] = self._spawn(
            [str(BIN / "natsched"), "master", "--lease-ttl", str(LEASE_TTL),
             "--unresponsive-after", str(UNRESPONSIVE), "--replicas", self.replicas]
        )  # fmt: skip

    def start_agent(self, name: str, state_dir: str | None = None) -> subprocess.Popen[bytes]:
        """Start agent ``name`` with its current state directory (or ``state_dir``, a twin's)."""
        proc = self._spawn(
            [str(BIN / "natsched-agent"), "--name", name, "--pool", "lb",
             "--state-dir", state_dir or self.state_dirs.get(name, str(self.root / name))]
        )  # fmt: skip
        return proc

    def stop(self) -> None:
        for proc in [*self.agents.values(), *self.masters.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in [*self.agents.values(), *self.masters.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for server in self.servers:
            server.stop()
        self._log.close()

    # --- observation ---------------------------------------------------------------
    async def _on_event(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            self.arrivals.append((time.time(), json.loads(msg.data)))

    async def _started_after(
        self, since: float, check: Callable[[dict[str, Any]], bool], bound: float, *, new_slot: bool = False
    ) -> float | None:
        """Seconds from ``since`` until a run matching ``check`` started (None past ``bound``).

        Only a start that happened after ``since`` (its event's own time; all processes share
        this host's clock) counts, not one already in flight; ``new_slot``: and only for a slot
        after ``since`` (a master fault is healed when slots are fired again, not caught up).
        """
        deadline = time.time() + bound
        while time.time() < deadline:
            for received, event in reversed(self.arrivals):
                if received < since:
                    break
                if (
                    event.get("state") == "started"
                    and float(event.get("at") or 0) >= since
                    and (not new_slot or float(event.get("scheduled_at") or 0) >= since)
                    and check(event)
                ):
                    return float(received - since)
            await asyncio.sleep(0.05)
        return None

    def _dispatched(self, event: dict[str, Any]) -> bool:
        return event["job"] in (f"{GROUP}.slave", f"{GROUP}.lb")

    async def leader(self) -> tuple[int, str] | None:
        """The leading master's pid and the server it is connected to (host:port)."""
        for _ in range(50):
            try:
                found = await collect_masters(ConnectionSettings(url=self.url, connect_timeout=2), 0.5)
            except Exception:  # noqa: BLE001 - server restarting: ask again
                found = []
            leaders = [m for m in found if m.get("leader")]
            if len(leaders) == 1:
                return int(str(leaders[0]["master"]).rsplit("-", 2)[1]), str(leaders[0].get("server", ""))
            await asyncio.sleep(0.2)
        return None

    async def leader_pid(self) -> int | None:
        found = await self.leader()
        return found[0] if found else None

    def revive(self) -> None:
        """Restart a master or agent that exited on its own, as systemd's Restart=always does
        (e.g. a start-up timeout while a cluster elects); each one is reported."""
        for kind, procs in (("master", self.masters), ("agent", self.agents)):
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    self.revived.append(f"{kind} {name} exited with {code}; restarted")
                    self.say(self.revived[-1])
                    if kind == "master":
                        self.start_master(name)
                    else:
                        self.agents[name] = self.start_agent(name)

    def _master_named(self, pid: int) -> str | None:
        return next((name for name, proc in self.masters.items() if proc.pid == pid), None)


def _servers(root: Path, cluster: bool) -> list[EmbeddedServer]:
    if not cluster:
        return [EmbeddedServer(data_dir=root / "nats", port=free_port(), log_file=root / "nats.log")]
    nodes = ("n1", "n2", "n3")
    routes = {name: free_port() for name in nodes}
    servers = []
    for name in nodes:
        others = ", ".join(f"nats://127.0.0.1:{routes[o]}" for o in nodes if o != name)
        cluster_block = (
            f"server_name: {name}\ncluster {{\n  name: natsched-chaos\n  listen: 127.0.0.1:{routes[name]}\n"
            f"  routes: [{others}]\n}}\n"
        )
        servers.append(
            EmbeddedServer(
                data_dir=root / name,
                port=free_port(),
                log_file=root / f"{name}.log",
                extra_config=cluster_block,
            )
        )
    return servers
