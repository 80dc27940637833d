"""Running one job's process: argv (or /bin/sh -c when asked), output, timeout, tree kill.

Uses the stock asyncio loop and ``create_subprocess_exec`` (uvloop spawns several times
slower here). Each process starts in its own session, so a timeout or cancel can signal
the whole process group; descendants that left the group (setsid) are found with psutil
before anything is killed. ``start`` raises :class:`RunError` (one line) when the
process cannot be started at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import psutil

from natsched.errors import RunError

OutputCallback = Callable[[bytes], Awaitable[None]]
CHUNK = 64 * 1024
DRAIN_TIMEOUT = 2.0  # after exit, a grandchild may keep the pipe open: stop reading after this


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessSpec:
    argv: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    timeout: float | None = None
    kill_grace: float = 5.0
    tail_bytes: int = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessResult:
    pid: int | None
    exit_code: int | None
    signal: int | None
    started_at: float
    ended_at: float
    timed_out: bool = False
    killed: bool = False
    output_tail: bytes = b""
    output_bytes: int = 0
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at


def _credentials(user: str | None, env: dict[str, str]) -> dict[str, object]:
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise RunError(f"job asks to run as unknown user {user!r}") from None
    if entry.pw_uid == os.geteuid():
        return {}
    if os.geteuid() != 0:
        raise RunError(f"job asks to run as {user!r} but the agent does not run as root")
    env.update({"HOME": entry.pw_dir, "USER": user, "LOGNAME": user})
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": os.getgrouplist(user, entry.pw_gid)}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_tree(pid: int, processes: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the session/group we started
    for process in processes:  # and whoever escaped it with setsid
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


class RunningProcess:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        spec: ProcessSpec,
        started_at: float,
        on_output: OutputCallback | None,
    ) -> None:
        self._process = process
        self._spec = spec
        self.pid = process.pid
        self.started_at = started_at
        self._on_output = on_output
        self._tail = bytearray()
        self._bytes = 0
        self._killed = False
        self._timed_out = False
        self._kill_requested = asyncio.Event()
        self._result: asyncio.Future[ProcessResult] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._supervise(), name=f"process-{self.pid}")

    async def wait(self) -> ProcessResult:
        return await asyncio.shield(self._result)

    async def kill(self, grace: float | None = None) -> None:
        """Cancel: SIGTERM the tree, SIGKILL after ``grace``; the result says killed."""
        if not self._result.done():
            self._killed = True
            self._grace = self._spec.kill_grace if grace is None else grace
            self._kill_requested.set()

    async def _read(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        limit = self._spec.tail_bytes
        while chunk := await stream.read(CHUNK):
            self._bytes += len(chunk)
            self._tail += chunk
            if len(self._tail) > limit:
                del self._tail[: len(self._tail) - limit]
            if self._on_output is not None:
                await self._on_output(chunk)

    async def _terminate(self, grace: float) -> None:
        tree = _tree(self.pid)
        _signal_tree(self.pid, tree, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), grace)
        _, alive = psutil.wait_procs(tree, timeout=0)
        if alive or self._process.returncode is None:
            _signal_tree(self.pid, alive, signal.SIGKILL)

    async def _supervise(self) -> None:
        reader = asyncio.create_task(self._read())
        exited = asyncio.create_task(self._process.wait())
        killed = asyncio.create_task(self._kill_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, killed}, timeout=self._spec.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if exited not in done:
                self._timed_out = not self._killed
                await self._terminate(getattr(self, "_grace", self._spec.kill_grace))
            await exited
            try:
                await asyncio.wait_for(asyncio.shield(reader), DRAIN_TIMEOUT)
            except TimeoutError:
                reader.cancel()
        finally:
            killed.cancel()
            if not reader.done():
                reader.cancel()
        code = self._process.returncode
        self._result.set_result(
            ProcessResult(
                pid=self.pid,
                exit_code=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                started_at=self.started_at,
                ended_at=time.time(),
                timed_out=self._timed_out,
                killed=self._killed,
                output_tail=bytes(self._tail),
                output_bytes=self._bytes,
            )
        )


class ProcessRunner:
    """Starts processes and keeps track of them until they end."""

    def __init__(self) -> None:
        self._running: set[RunningProcess] = set()
        self._accepting = True

    @property
    def running(self) -> int:
        return len(self._running)

    async def start(self, spec: ProcessSpec, on_output: OutputCallback | None = None) -> RunningProcess:
        if not self._accepting:
            raise RunError("the agent is shutting down and starts no new runs")
        env = dict(spec.env)
        credentials = _credentials(spec.user, env)
        # Extra arguments of a shell job become its $1, $2, ... ($0 is "natsched").
        argv = ("/bin/sh", "-c", spec.argv[0], "natsched", *spec.argv[1:]) if spec.shell else spec.argv
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=spec.cwd,
                start_new_session=True,
                **credentials,  # type: ignore[arg-type]
            )
        except FileNotFoundError as exc:
            missing = spec.cwd if spec.cwd and exc.filename == spec.cwd else argv[0]
            raise RunError(f"cannot start {argv[0]!r}: {missing!r} not found") from None
        except (PermissionError, NotADirectoryError, OSError) as exc:
            raise RunError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from None
        running = RunningProcess(process, spec, time.time(), on_output)
        self._running.add(running)
        running._result.add_done_callback(lambda _: self._running.discard(running))
        return running

    async def shutdown(self, grace: float) -> None:
        """Start nothing new; let running processes end within ``grace``, then kill them."""
        self._accepting = False
        running = list(self._running)
        if not running:
            return
        waits = [asyncio.ensure_future(r.wait()) for r in running]
        _, pending = await asyncio.wait(waits, timeout=grace)
        for r in running:
            if not r._result.done():
                await r.kill(0.5)
        if pending:
            await asyncio.wait(pending, timeout=10)
