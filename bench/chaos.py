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
- executions of an every-second job for no whole-second slot (no slot would count them): 0
- slots with neither an execution nor a recorded failed/lost/skipped run (silent misses): 0
- executions with no ``started`` event, runs recorded ``succeeded`` that never executed: 0
- runs left open (queued/started with no final event once everything settled): 0
- chain: upstream successes followed by no downstream run, or by two executions, and
  downstream executions whose upstream never succeeded: 0
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from bench.chaosledger import (
    AGENTS,
    GROUP,
    ChaosResult,
    Healed,
    Ledger,
    open_runs,
    print_result,
    upstream_success,
)
from bench.chaosplant import AGENT_FREEZE, CLUSTER_FAULTS, FAULTS, LEASE_TTL, LONG_FAULTS, Plant
from natsched import subjects
from natsched.buckets import AGENT_TTL
from natsched.kvscan import read_stream
from natsched.master.slotaudit import PASS, SETTLE

AUDITED_WITHIN = SETTLE + PASS + 1.0  # a claim met by a leader is recorded within this


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


class Chaos(Plant):
    """The fault actions of one chaos run, the run itself and its final accounting."""

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
        upstream = await self._next_arrival(time.time(), upstream_success) if name else None
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
            faults_done = time.time() - pause
            await asyncio.sleep(3.0)  # let the last fault's consequences show
            window_end = time.time() - 2.0
            await self._disable(nc)
            # A slot the last fault left claimed and not dispatched is recorded by the leader's
            # slot audit SETTLE after it met the claim (by the time the fault healed): read the
            # events only after that, or such a slot counts as a silent miss it is not.
            await asyncio.sleep(max(0.0, faults_done + AUDITED_WITHIN - time.time()))
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
            if not open_runs(await self._events(nc)):
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


async def _quiet(exc: Exception) -> None:
    """The observer's own reconnects while nats-server restarts are expected, not news."""


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
