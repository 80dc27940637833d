"""Shared benchmark plumbing: a private nats-server, raw nats-py floors, a result table.

Every natsched figure is printed next to a raw nats-py floor measured in the same run,
so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from nats.aio.client import Client
from nats.aio.msg import Msg

from natsched.embedded import EmbeddedServer, free_port

RESULTS_DIR = Path(__file__).parent / "results"


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    floor_name: str
    floor: float
    target: str
    met: bool | None

    @property
    def ratio(self) -> float:
        return self.value / self.floor if self.floor else float("nan")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@contextmanager
def server() -> Iterator[EmbeddedServer]:
    # The server's default sync interval, as the floors in NATS-NOTES were measured; production
    # configs fsync every write (sync_interval: always), which slows acknowledged writes.
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedServer(data_dir=Path(tmp), port=free_port(), sync_always=False) as srv,
    ):
        yield srv


async def request_reply_floor(nc: Client, count: int = 2000) -> tuple[float, float]:
    """Raw nats-py request/reply round trip, p50 and p99 in ms."""

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe("bench.echo", cb=echo)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await nc.request("bench.echo", b"x", timeout=5)
        samples.append((time.perf_counter() - start) * 1000)
    await sub.unsubscribe()
    return statistics.median(samples), percentile(samples, 99)


async def kv_put_watch_floor(nc: Client, count: int = 500) -> tuple[float, float]:
    """Raw KV put -> seen by one kv.watch() watcher, p50 and p99 in ms."""
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="bench_floor")
    watcher = await kv.watch("k")
    seen: asyncio.Queue[float] = asyncio.Queue()

    async def pump() -> None:
        async for entry in watcher:
            if entry is not None:
                seen.put_nowait(time.perf_counter())

    task = asyncio.create_task(pump())
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await kv.put("k", str(i).encode())
        samples.append((await asyncio.wait_for(seen.get(), 5) - start) * 1000)
    task.cancel()
    await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
    await js.delete_key_value("bench_floor")
    return statistics.median(samples), percentile(samples, 99)


async def kv_create_floor(nc: Client, count: int = 500) -> tuple[float, float]:
    """Raw KV create of a new key (what a run's claim is: a compare-and-set), p50 and p99 in ms."""
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="bench_create_floor")
    samples = []
    for i in range(count):
        start = time.perf_counter()
        await kv.create(f"run{i}", b"x")
        samples.append((time.perf_counter() - start) * 1000)
    await js.delete_key_value("bench_create_floor")
    return statistics.median(samples), percentile(samples, 99)


def spawn_start_floor(bursts: int = 3, count: int = 200) -> float:
    """Raw ``os.posix_spawn`` of /bin/true as the agent starts a job (output pipe, stdin
    /dev/null, own session, this environment), ``count`` back to back with the children
    left running, as a burst of due jobs starts them: median ms per start."""
    samples = []
    env = dict(os.environ)
    with open(os.devnull, "rb") as devnull:
        for _ in range(bursts):
            pids = []
            for _ in range(count):
                start = time.perf_counter()
                read_end, write_end = os.pipe2(os.O_CLOEXEC)
                actions = [
                    (os.POSIX_SPAWN_DUP2, devnull.fileno(), 0),
                    (os.POSIX_SPAWN_DUP2, write_end, 1),
                    (os.POSIX_SPAWN_DUP2, write_end, 2),
                ]
                pids.append(
                    os.posix_spawn("/bin/true", ["/bin/true"], env, file_actions=actions, setsid=True)
                )
                os.close(write_end)
                samples.append((time.perf_counter() - start) * 1000)
                os.close(read_end)
            for pid in pids:
                os.waitpid(pid, 0)
    return statistics.median(samples)


def machine() -> dict[str, object]:
    return {
        "cpus": psutil.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def report(title: str, figures: list[Figure], name: str) -> None:
    print(f"\n{title}  ({machine()})")
    print(f"{'figure':44} {'natsched':>12} {'raw floor':>28} {'ratio':>8}  target")
    for f in figures:
        met = "" if f.met is None else ("  MET" if f.met else "  NOT MET")
        print(
            f"{f.name:44} {f.value:>9.3f} {f.unit:2} {f.floor_name:>16} {f.floor:>8.3f} {f.ratio:>8.2f}  "
            f"{f.target}{met}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "time": time.time(),
                "figures": [asdict(f) | {"ratio": f.ratio} for f in figures],
            },
            indent=2,
        )
    )
    print(f"written to {out}")


BIN = Path(sys.executable).parent


class Services:
    """``natsched master`` and ``natsched-agent`` processes of a bench, logging to one file."""

    def __init__(self, url: str, root: Path, env: dict[str, str] | None = None) -> None:
        self.env = {**os.environ, "NATS_URL": url, **(env or {})}
        self._root = root
        self._log = open(root / "services.log", "wb")  # noqa: SIM115 - closed in stop()
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=self.env, stdout=self._log, stderr=self._log)
        self.procs.append(proc)
        return proc

    def master(self, *args: str) -> subprocess.Popen[bytes]:
        return self._start([str(BIN / "natsched"), "master", *args])

    def agent(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        state = str(self._root / name)
        return self._start([str(BIN / "natsched-agent"), "--name", name, "--state-dir", state, *args])

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:  # a bench reports its figures, not a stuck shutdown
                print(f"{proc.args!r} did not stop within 20 s of SIGTERM: killed", flush=True)
                proc.kill()
                proc.wait(5)
        self._log.close()


@contextmanager
def services(url: str, env: dict[str, str] | None = None) -> Iterator[Services]:
    """Processes started through the yielded ``Services`` are stopped on the way out."""
    with tempfile.TemporaryDirectory() as tmp:
        running = Services(url, Path(tmp), env)
        try:
            yield running
        finally:
            running.stop()


async def apply_when_up(nc: Client, content: str, timeout: float = 30) -> None:
    """Apply a job file as soon as a master answers (it may still be starting)."""
    body = json.dumps({"content": content, "source": "bench"}).encode()
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = await nc.request("natsched.api.apply", body, timeout=5)
            if json.loads(msg.data).get("ok"):
                return
        except Exception:  # noqa: BLE001 - master not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no master applied the bench's jobs within {timeout:g}s")
        await asyncio.sleep(0.3)
