"""Chaos: kill, freeze and restart everything while jobs fire every second; count real executions.

One nats-server, two ``natsched master`` processes, three ``natsched-agent`` processes, and
jobs firing every second in all three modes plus a chain (no ``redispatch_lost``: that is an
opt-in re-run of a lost run, at least once by its nature - an agent killed after its job
finished but before it said so makes the job run again; tests/faults/test_orphans.py covers
it). Every job appends
``$NATSCHED_RUN_ID $NATSCHED_AGENT`` to a witness file when it really executes. Faults come
from a seeded random order (the seed is printed, so a run can be repeated): kill -9 and
SIGSTOP/SIGCONT of the leading master, kill -9 and SIGSTOP (past the dispatch timeout) of
agents, kill -9 and restart of nats-server (with ``--cluster``: a random node, and the node
the leading master is connected to), a second agent started under a taken name, kill -9
of a master within milliseconds of a chain's upstream succeeding, and (runs of 120 s or
more) an agent frozen past the heartbeat TTL whose name a twin takes before it wakes, and
a nats-server frozen (SIGSTOP) for 2-7 s. A master or agent that
exits on its own is restarted, as systemd would, and reported. Afterwards the witness files
are held against the events stream:

- run ids executed twice, slots (or slot x target) executed by two runs: 0
- slots with neither an execution nor a recorded failed/lost/skipped run (silent misses): 0
- executions with no ``started`` event, runs recorded ``succeeded`` that never executed: 0
- runs left open (queued/started with no final event once everything settled): 0
- chain: upstream successes followed by no downstream run, or by two executions: 0
- a second agent with a taken name that was not refused: 0
- faults that could not be done (no leader found) or never healed (no new run within 20-30 s): 0

Heal times count only runs that started after the fault (a master fault: for a slot after it),
not events already in flight. ``tests/faults/test_chaos.py`` runs it for CI;
``python -m bench.chaos --seconds N [--seed S] [--cluster] [--keep DIR]`` runs it longer and
prints how long each fault took to heal (``--keep``: the logs, witness files and events stay).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched import subjects
from natsched.buckets import AGENT_TTL
from natsched.cli.masters import collect_masters
from natsched.embedded import EmbeddedServer, free_port
from natsched.kvscan import read_stream
from natsched.settings import ConnectionSettings

BIN = Path(sys.executable).parent
AGENTS = ("a1", "a2", "a3")
GROUP = "chaos"
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
COUNTS = (
    "run ids executed twice",
    "slots executed by two runs",
    "silent misses",
    "executions with no started event",
    "succeeded but never executed",
    "runs left open",
    "chain hops missed or doubled",
    "duplicate agent names accepted",
    "faults not done or never healed",
)


def jobs_file(witness: Path) -> str:
    def command(job: str) -> str:
        line = f'echo "$NATSCHED_RUN_ID $NATSCHED_AGENT" >> {witness / job}'
        return json.dumps(["/bin/sh", "-c", line])

    every = 'triggers = [{ every = "1s" }]\nmisfire = "run-all"\nmisfire_cap = 300\n'
    everyone = json.dumps(list(AGENTS))
    return (
        f'group = "{GROUP}"\n'
        f'[[jobs]]\nname = "mirror"\nmode = "mirror"\ncommand = {command("mirror")}\n'
        f"targets = {{ agents = {everyone} }}\n{every}"
        f'[[jobs]]\nname = "slave"\nmode = "slave"\ncommand = {command("slave")}\n'
        f"targets = {{ agents = {everyone} }}\n{every}"
        f'[[jobs]]\nname = "lb"\nmode = "load-balance"\ncommand = {command("lb")}\n'
        f'targets = {{ pools = ["lb"] }}\n{every}'
        f'[[jobs]]\nname = "chained"\nmode = "load-balance"\ncommand = {command("chained")}\n'
        f'targets = {{ pools = ["lb"] }}\ntriggers = [{{ after = ["{GROUP}.lb"] }}]\n'
    )


@dataclass
class Healed:
    fault: str
    target: str
    seconds: float | None  # None: did not heal within the bound
    happened: bool = True  # False: the fault could not be done (e.g. no leader found)

    @property
    def problem(self) -> bool:
        # A twin that was not refused has its own count.
        return not self.happened or (self.seconds is None and self.fault != "duplicate_agent")


@dataclass
class ChaosResult:
    seed: int
    counts: dict[str, int]
    executions: int
    slots_checked: int
    healed: list[Healed] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first few offenders, for the report
    revived: list[str] = field(default_factory=list)  # services that exited and were restarted


class Chaos:
    """The processes of one chaos run, the fault actions and the final accounting."""

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

    # --- faults --------------------------------------------------------------------
    async def kill_leader(self) -> None:
        pid = await self.leader_pid()
        name = self._master_named(pid) if pid else None
        if name is None:
            self.healed.append(Healed("kill_leader", "?", None, happened=False))
            return
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.masters[name].wait()
        at = time.time()
        heal = await self._started_after(at, self._dispatched, 20, new_slot=True)
        self.healed.append(Healed("kill_leader", name, heal))
        self.start_master(name)

    async def stop_leader(self) -> None:
        pid = await self.leader_pid()
        name = self._master_named(pid) if pid else None
        if name is None:
            self.healed.append(Healed("stop_leader", "?", None, happened=False))
            return
        os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
        at = time.time()
        await asyncio.sleep(LEASE_TTL + 1.5)
        heal = await self._started_after(at, self._dispatched, 20, new_slot=True)
        os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
        self.healed.append(Healed("stop_leader", name, heal))

    async def kill_agent(self) -> None:
        name = self.rng.choice(AGENTS)
        self.agents[name].kill()
        self.agents[name].wait()
        await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        at = time.time()
        self.agents[name] = self.start_agent(name)
        heal = await self._started_after(at, lambda e: e["agent"] == name, 20)
        self.healed.append(Healed("kill_agent", name, heal))

    async def stop_agent(self) -> None:
        name = self.rng.choice(AGENTS)
        self.agents[name].send_signal(signal.SIGSTOP)
        await asyncio.sleep(AGENT_FREEZE)
        self.agents[name].send_signal(signal.SIGCONT)
        at = time.time()
        heal = await self._started_after(at, lambda e: e["agent"] == name, 20)
        self.healed.append(Healed("stop_agent", name, heal))

    async def restart_nats(self) -> None:
        """kill -9 one nats-server (the only one, or a random node of the cluster), then restart it."""
        server = self.rng.choice(self.servers)
        server.kill()
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        server.start()
        at = time.time()
        heal = await self._started_after(at, self._dispatched, 30, new_slot=True)
        self.healed.append(Healed("restart_nats", f"nats-server:{server.port}", heal))

    async def kill_master_after_upstream(self) -> None:
        """kill -9 the leader, or the standby (the masters share the chain consumer, so either
        may hold the completion), within milliseconds of an upstream of the chain succeeding:
        the downstream must still start, once, within the lease and ack wait."""
        pid = await self.leader_pid()
        name = self._master_named(pid) if pid else None
        if name is not None and self.rng.random() < 0.5:
            name = next(other for other in self.masters if other != name)
            pid = self.masters[name].pid
        upstream = await self._next_arrival(time.time(), _upstream_success) if name else None
        if pid is None or name is None or upstream is None:
            self.healed.append(Healed("kill_master_after_upstream", name or "?", None, happened=False))
            return
        os.kill(pid, signal.SIGKILL)
        self.masters[name].wait()
        run_id = upstream["run_id"]
        heal = await self._started_after(
            float(upstream["at"]),
            lambda e: e["job"] == f"{GROUP}.chained" and run_id in e.get("detail", {}).get("parents", ""),
            20,
        )
        self.healed.append(Healed("kill_master_after_upstream", name, heal))
        self.start_master(name)

    async def _next_arrival(
        self, since: float, check: Callable[[dict[str, Any]], bool], bound: float = 10.0
    ) -> dict[str, Any] | None:
        deadline = time.time() + bound
        while time.time() < deadline:
            for received, event in reversed(self.arrivals):
                if received < since:
                    break
                if check(event):
                    return dict(event)
            await asyncio.sleep(0.001)  # the kill is to land within milliseconds of the completion
        return None

    async def restart_leader_node(self) -> None:
        """Cluster: kill -9 the node the leading master is connected to, then restart it."""
        found = await self.leader()
        server = next((s for s in self.servers if found and found[1].endswith(f":{s.port}")), None)
        if found is None or server is None:
            self.healed.append(
                Healed("restart_leader_node", found[1] if found else "?", None, happened=False)
            )
            return
        server.kill()
        at = time.time()
        await asyncio.sleep(self.rng.uniform(1.0, 3.0))
        server.start()
        heal = await self._started_after(at, self._dispatched, 30, new_slot=True)
        self.healed.append(Healed("restart_leader_node", f"nats-server:{server.port}", heal))

    async def stop_nats(self) -> None:
        """SIGSTOP one nats-server for 2-7 s (requests time out, connections stay), then SIGCONT:
        every write sent meanwhile lands late, after its sender gave up on it."""
        server = self.rng.choice(self.servers)
        pid = server.pid
        if pid is None:
            self.healed.append(Healed("stop_nats", f"nats-server:{server.port}", None, happened=False))
            return
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(self.rng.uniform(2.0, 7.0))
        os.kill(pid, signal.SIGCONT)
        at = time.time()
        heal = await self._started_after(at, self._dispatched, 30, new_slot=True)
        self.healed.append(Healed("stop_nats", f"nats-server:{server.port}", heal))

    async def twin_after_freeze(self) -> None:
        """SIGSTOP an agent past the heartbeat TTL, start a twin under its name (accepted: the
        name is free), SIGCONT the first: it must stop without running anything, and the
        twin serves the name from then on."""
        name = self.rng.choice(AGENTS)
        old = self.agents[name]
        old.send_signal(signal.SIGSTOP)
        try:
            freed = await self._heartbeat_gone(name, AGENT_TTL + 15)
            twin_dir = str(self.root / f"twin-{name}-{int(time.time())}")
            twin = self.start_agent(name, twin_dir)
            heal = await self._started_after(time.time(), lambda e: e["agent"] == name, 20)
        finally:
            old.send_signal(signal.SIGCONT)
        try:
            code: int | None = await asyncio.to_thread(old.wait, 15)
        except subprocess.TimeoutExpired:
            code = None
            old.kill()
            old.wait()
        self.agents[name] = twin
        # From now on the twin is this agent, also when it is restarted: its state directory
        # holds what it ran (a restart on the first one's would catch up slots the twin ran).
        self.state_dirs[name] = twin_dir
        stopped = code is not None and code != 0
        self.healed.append(Healed("twin_after_freeze", name, heal if stopped else None, happened=freed))

    async def _heartbeat_gone(self, name: str, bound: float) -> bool:
        deadline = time.time() + bound
        while time.time() < deadline:
            try:
                nc = await nats.connect(self.url.split(","), connect_timeout=2, error_cb=_quiet)
                try:
                    kv = await nc.jetstream().key_value(subjects.AGENTS_BUCKET)
                    await kv.get(name)
                finally:
                    await nc.close()
            except nats.js.errors.KeyNotFoundError:
                return True
            except Exception:  # noqa: BLE001 - server restarting: ask again
                pass
            await asyncio.sleep(0.5)
        return False

    async def duplicate_agent(self) -> None:
        name = self.rng.choice(AGENTS)
        started = time.time()
        twin = self.start_agent(name, str(self.root / f"twin-{name}-{int(started)}"))
        try:
            code: int | None = await asyncio.to_thread(twin.wait, 15)
        except subprocess.TimeoutExpired:
            code = None
        if code is None or code == 0:
            self.duplicates_accepted += 1
            twin.kill()
            twin.wait()
        self.healed.append(Healed("duplicate_agent", name, time.time() - started if code else None))

    # --- the run -------------------------------------------------------------------
    async def run(self, seconds: float) -> ChaosResult:
        for server in self.servers:
            server.start()
        for name in ("m1", "m2"):
            self.start_master(name)
        for name in AGENTS:
            self.agents[name] = self.start_agent(name)
        nc = await nats.connect(
            self.url.split(","), max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_quiet
        )
        try:
            await nc.subscribe(subjects.EVENTS_SUBJECTS, cb=self._on_event)
            await self._apply(nc)
            window_start = time.time() + 3.0
            await asyncio.sleep(3.0)
            schedule = self._fault_order(seconds)
            self.say(f"chaos seed {self.seed}: {', '.join(schedule)}")
            pause = max(1.0, seconds / max(1, len(schedule)) - 4.0)
            for fault in schedule:
                self.revive()
                await getattr(self, fault)()
                await asyncio.sleep(pause)
            await asyncio.sleep(3.0)  # let the last fault's consequences show
            window_end = time.time() - 2.0
            await self._disable(nc)
            await self._settle(nc)
            return await self._account(nc, window_start, window_end)
        finally:
            await nc.close()

    def _fault_order(self, seconds: float) -> list[str]:
        """Every fault once, then more at random while they fit (~10 s each), in seeded order."""
        faults = FAULTS + (CLUSTER_FAULTS if len(self.servers) > 1 else ())
        faults = self.only or faults + (LONG_FAULTS if seconds >= 120 else ())
        order = list(faults)
        while len(order) * 10.0 < seconds:
            order.append(self.rng.choice(faults))
        self.rng.shuffle(order)
        return order

    async def _apply(self, nc: Client) -> None:
        body = json.dumps({"content": jobs_file(self.witness), "source": "chaos.toml"}).encode()
        deadline = time.monotonic() + 90  # a cluster on a busy machine may take a while to elect
        while time.monotonic() < deadline:
            try:
                reply = json.loads((await nc.request(subjects.API_APPLY, body, timeout=5)).data)
                if reply.get("ok"):
                    return
                raise RuntimeError(f"chaos jobs refused: {reply}")
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                self.revive()  # a master that timed out at start-up while the cluster elected
                await asyncio.sleep(0.3)
        raise RuntimeError("no master applied the chaos jobs")

    async def _disable(self, nc: Client) -> None:
        keys = [f"{GROUP}.{job}" for job in ("mirror", "slave", "lb", "chained")]
        body = json.dumps({"jobs": keys}).encode()
        for _ in range(50):
            try:
                reply = json.loads((await nc.request(subjects.API_JOBS_DISABLE, body, timeout=5)).data)
                if reply.get("ok"):
                    return
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            await asyncio.sleep(0.3)
        raise RuntimeError("could not disable the chaos jobs")

    async def _settle(self, nc: Client, bound: float = 30.0) -> None:
        """Until every run has a final event (or ``bound``): lost agents, outboxes, fan-ins."""
        deadline = time.time() + bound
        await asyncio.sleep(1.0)
        while time.time() < deadline:
            if not _open_runs(await self._events(nc)):
                return
            await asyncio.sleep(0.5)

    async def _events(self, nc: Client) -> list[dict[str, Any]]:
        events = []
        js = nc.jetstream()
        async for msg in read_stream(js, subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS):
            try:
                events.append(json.loads(msg.data))
            except ValueError:
                continue
        return events

    async def _account(self, nc: Client, start: float, end: float) -> ChaosResult:
        events = await self._events(nc)
        # read after a failing --keep run (small: a few thousand lines)
        (self.root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        executions: list[tuple[str, str, str]] = []  # (job, run id, agent)
        for job in ("mirror", "slave", "lb", "chained"):
            path = self.witness / job
            for line in path.read_text().splitlines() if path.exists() else []:
                run_id, _, agent = line.partition(" ")
                executions.append((f"{GROUP}.{job}", run_id, agent))
        ledger = Ledger(events, executions, start, end)
        counts = ledger.counts()
        counts["duplicate agent names accepted"] = self.duplicates_accepted
        counts["faults not done or never healed"] = sum(heal.problem for heal in self.healed)
        return ChaosResult(
            seed=self.seed,
            counts=counts,
            executions=len(executions),
            slots_checked=ledger.slots_checked,
            healed=self.healed,
            problems=ledger.problems[:20],
            revived=self.revived,
        )


def _upstream_success(event: dict[str, Any]) -> bool:
    return bool(event["job"] == f"{GROUP}.lb" and event["state"] == "succeeded")


async def _quiet(exc: Exception) -> None:
    """The observer's own reconnects while nats-server restarts are expected, not news."""


def _open_runs(events: list[dict[str, Any]]) -> set[str]:
    latest: dict[str, str] = {}
    for event in events:
        if latest.get(event["run_id"]) in (None, "queued", "started"):
            latest[event["run_id"]] = event["state"]
    return {run for run, state in latest.items() if state in ("queued", "started")}


class Ledger:
    """The witness files held against the events: what ran, what was recorded, what is missing."""

    NOT_RUN = ("failed", "timed_out", "killed", "lost", "skipped")

    def __init__(
        self, events: list[dict[str, Any]], executions: list[tuple[str, str, str]], start: float, end: float
    ) -> None:
        self.events = events
        self.executions = executions
        self.start, self.end = start, end
        self.by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            self.by_run[event["run_id"]].append(event)
        self.problems: list[str] = []
        self.slots_checked = 0

    def _note(self, what: str) -> int:
        self.problems.append(what)
        return 1

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(COUNTS, 0)
        ran = Counter(run_id for _, run_id, _ in self.executions)
        counts["run ids executed twice"] = sum(
            self._note(f"run {r} executed {n}x") for r, n in ran.items() if n > 1
        )
        counts["executions with no started event"] = sum(
            self._note(f"run {r} executed without a started event")
            for r in ran
            if not any(e["state"] == "started" for e in self.by_run.get(r, []))
        )
        counts["succeeded but never executed"] = sum(
            self._note(f"run {r} succeeded but never executed")
            for r, evs in self.by_run.items()
            if any(e["state"] == "succeeded" for e in evs)
            and r not in ran
            and evs[0]["job"].startswith(GROUP)
        )
        counts["runs left open"] = sum(self._note(f"run {r} left open") for r in _open_runs(self.events))
        counts["slots executed by two runs"], counts["silent misses"] = self._slots(ran)
        counts["chain hops missed or doubled"] = self._chain(ran)
        return counts

    def _slot_of(self, run_id: str) -> float | None:
        return next((e["scheduled_at"] for e in self.by_run.get(run_id, []) if e.get("scheduled_at")), None)

    def _slots(self, ran: Counter[str]) -> tuple[int, int]:
        executed: dict[tuple[str, float, str], set[str]] = defaultdict(set)
        for job, run_id, agent in self.executions:
            slot = self._slot_of(run_id)
            if slot is not None and job != f"{GROUP}.chained":
                executed[(job, slot, "" if job == f"{GROUP}.lb" else agent)].add(run_id)
        recorded: set[tuple[str, float, str]] = set()
        for event in self.events:
            if event["state"] in self.NOT_RUN and event.get("scheduled_at"):
                agent = "" if event["job"] == f"{GROUP}.lb" else event["agent"]
                recorded.add((event["job"], event["scheduled_at"], agent))
        doubled = sum(
            self._note(f"{job} slot {slot:.0f} on {agent or 'the pool'} ran as {sorted(runs)}")
            for (job, slot, agent), runs in executed.items()
            if len(runs) > 1
        )
        missed = 0
        for slot in range(int(self.start) + 1, int(self.end)):
            for job, targets in (
                (f"{GROUP}.mirror", AGENTS),
                (f"{GROUP}.slave", AGENTS),
                (f"{GROUP}.lb", ("",)),
            ):
                for agent in targets:
                    self.slots_checked += 1
                    key = (job, float(slot), agent)
                    if key not in executed and key not in recorded:
                        missed += self._note(
                            f"{job} slot {slot} on {agent or 'the pool'}: no run, nothing recorded"
                        )
        return doubled, missed

    def _chain(self, ran: Counter[str]) -> int:
        upstream_ok = {  # a completion after the window may meet the chained job disabled
            e["run_id"]
            for e in self.events
            if e["job"] == f"{GROUP}.lb" and e["state"] == "succeeded" and float(e["at"]) < self.end
        }
        followers: dict[str, set[str]] = defaultdict(set)
        for event in self.events:
            if event["job"] == f"{GROUP}.chained":
                for parent in event.get("detail", {}).get("parents", "").split(","):
                    followers[parent].add(event["run_id"])
        bad = 0
        for parent in upstream_ok:
            runs = followers.get(parent, set())
            executed = sum(ran[r] for r in runs)
            if not runs or executed > 1:
                bad += self._note(f"upstream {parent}: downstream runs {sorted(runs)}, executed {executed}x")
        return bad


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


async def run_chaos(
    seconds: float,
    seed: int,
    say: Callable[[str], None] = print,
    *,
    cluster: bool = False,
    keep: Path | None = None,
    only: tuple[str, ...] = (),
) -> ChaosResult:
    """One chaos run in a temporary directory, or in ``keep`` (left behind to read its logs)."""
    with contextlib.ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="natsched-chaos-")))
        else:
            root = keep
            root.mkdir(parents=True, exist_ok=False)
        chaos = Chaos(root, seed, say, cluster, only)
        try:
            return await chaos.run(seconds)
        finally:
            chaos.stop()


def print_result(result: ChaosResult, say: Callable[[str], None] = print) -> None:
    say(f"chaos seed {result.seed}: {result.executions} executions, {result.slots_checked} slots checked")
    for name in COUNTS:
        say(f"  {name:36} {result.counts[name]}")
    for heal in result.healed:
        took = "did not heal" if heal.seconds is None else f"{heal.seconds:.2f} s"
        took = took if heal.happened else "NOT DONE"
        say(f"  healed {heal.fault:26} {heal.target:18} {took}")
    for revived in result.revived:
        say(f"  revived: {revived}")
    for problem in result.problems:
        say(f"  ! {problem}")


async def _main(awaitable: Awaitable[ChaosResult]) -> int:
    result = await awaitable
    print_result(result)
    return 1 if any(result.counts.values()) else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cluster", action="store_true", help="a 3-node JetStream cluster, replicas 3")
    parser.add_argument(
        "--keep", type=Path, default=None, help="run in this new directory and keep it (logs, witness files)"
    )
    kinds = FAULTS + CLUSTER_FAULTS + LONG_FAULTS
    parser.add_argument(
        "--only", default="", help=f"comma-separated faults to do, of: {', '.join(kinds)} (default: all)"
    )
    args = parser.parse_args()
    only = tuple(f for f in args.only.split(",") if f)
    if set(only) - set(kinds):
        parser.error(f"unknown faults: {', '.join(sorted(set(only) - set(kinds)))}")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    run = run_chaos(args.seconds, seed, cluster=args.cluster, keep=args.keep, only=only)
    sys.exit(asyncio.run(_main(run)))


if __name__ == "__main__":
    main()
