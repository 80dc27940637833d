"""Running one job's process: argv (or /bin/sh -c when asked), output, timeout, tree kill.

Most jobs start with ``agent.spawn`` (posix_spawn and a pidfd), jobs with ``cwd`` or
``user`` with ``spawn.spawn_as`` (Popen, the same pidfd watching): nothing depends on the
event loop's own subprocess support, so the agent may run on uvloop (whose
``subprocess_exec`` is ~5x slower here and refuses ``user``); only a platform without pidfds
takes ``loop.subprocess_exec``. Either way the RunningProcess is the protocol: a quiet
process costs no task, and we hold the transport to stop reading when something the job
left behind keeps its output pipe open (after ``drain_timeout``; that leftover is not
killed, daemons are legitimate, it only loses its stdout).

- Start failures raise :class:`RunError` with one readable line, so this runner never
  sets ``ProcessResult.error`` (it is there for runners that report them as results).
- stdout and stderr share one pipe, so they interleave as written; stdin is /dev/null.
  ``on_output`` gets every chunk (at most 64 KiB) in order; a consumer slower than the
  process loses chunks (a marker line says how many bytes) instead of slowing the job
  down. ``output_tail`` and ``output_bytes`` are always complete.
- Each process leads its own session. A timeout or cancel collects every descendant with
  psutil *first* (one that called setsid is only findable through its parent), SIGTERMs
  the process group and all of them, and SIGKILLs whatever is left after the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

import psutil

from agent import spawn
from agent.guardian import Guardian
from agent.proctree import signal_tree, tree_of, wait_gone
from agent.runas import run_as, start_failure
from natsched.errors import RunError

log = logging.getLogger(__name__)

OutputCallback = Callable[[bytes], Awaitable[None]]
CHUNK = 64 * 1024
STREAM_BACKLOG = 1024 * 1024  # output waiting for on_output; beyond it, chunks are dropped
DRAIN_TIMEOUT = 2.0
REAP_TIMEOUT = 1.0  # after SIGKILL, how long to wait for the kernel to tear the tree down


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessSpec:
    """What to run; ``env`` is all the process gets. With ``shell``, argv[1:] are the script's $1, $2..."""

    argv: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    user: str | None = None
    timeout: float | None = None
    kill_grace: float = 5.0
    tail_bytes: int = 4096

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError("argv needs a program (or, with shell, a script)")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"timeout must be positive or None, not {self.timeout}")
        if self.kill_grace < 0 or self.tail_bytes < 0:
            raise ValueError("kill_grace and tail_bytes cannot be negative")

    @property
    def command(self) -> tuple[str, ...]:
        # "natsched" becomes the script's $0, so the job's own arguments start at $1.
        return ("/bin/sh", "-c", self.argv[0], "natsched", *self.argv[1:]) if self.shell else self.argv


@dataclass(frozen=True, kw_only=True, slots=True)
class ProcessResult:
    pid: int | None
    exit_code: int | None  # None when a signal ended it
    signal: int | None
    started_at: float
    ended_at: float
    timed_out: bool = False
    killed: bool = False  # cancelled or stopped by shutdown, not by its timeout
    output_tail: bytes = b""
    output_bytes: int = 0
    error: str | None = None

    @property
    def duration(self) -> float:
        return self.ended_at - self.started_at


def _busy(task: asyncio.Task[None] | None) -> bool:
    return task is not None and not task.done()


class RunningProcess(asyncio.SubprocessProtocol):
    """A started process: ``await wait()`` for its result, ``await kill()`` to cancel it.

    It is also the protocol of its transport: the loop calls the methods below
    ``kill`` as the process starts, writes and exits, in the loop's thread.
    """

    def __init__(
        self,
        spec: ProcessSpec,
        on_output: OutputCallback | None,
        drain_timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.pid = 0
        self.started_at = 0.0
        self._spec = spec
        self._on_output = on_output
        self._drain_timeout = drain_timeout
        self._loop = loop
        self._transport: asyncio.SubprocessTransport | None = None
        self._ended_at = 0.0
        self._tail = bytearray()
        self._pending: deque[bytes] = deque()
        self._bytes = self._pending_bytes = self._dropped = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._streamer: asyncio.Task[None] | None = None
        self._terminator: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._drain: asyncio.TimerHandle | None = None
        self._has_exited = self._eof = self._timed_out = self._killed = False
        self._result: asyncio.Future[ProcessResult] = loop.create_future()

    async def wait(self) -> ProcessResult:
        """The result, once the process has exited and its output is read (or given up on)."""
        return await asyncio.shield(self._result)

    async def kill(self, grace: float | None = None) -> None:
        """Cancel: SIGTERM the tree now, SIGKILL what is left after ``grace`` (default: the spec's).

        Returns once the tree is signalled; ``wait()`` gives the result, with ``killed`` set.
        """
        if self._result.done():
            return
        if not (self._has_exited or self._timed_out):
            self._killed = True
        self._terminate(self._spec.kill_grace if grace is None else grace)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self.pid = self._transport.get_pid()
        self.started_at = time.time()
        if self._spec.timeout is not None:
            self._timer = self._loop.call_later(self._spec.timeout, self._expired)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._bytes += len(data)
        limit = self._spec.tail_bytes
        if len(data) >= limit:
            self._tail[:] = data[len(data) - limit :]
        else:
            self._tail += data
            if len(self._tail) > limit:
                del self._tail[: len(self._tail) - limit]
        if self._on_output is None:
            return
        if self._pending_bytes + len(data) > STREAM_BACKLOG:
            self._dropped += len(data)
            return
        self._queue_dropped_marker()
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._streamer is None:
            self._streamer = self._loop.create_task(self._stream(), name=f"output-{self.pid}")
            # A callback, not a finally: a task cancelled before its first step never runs one.
            self._streamer.add_done_callback(self._stream_done)
        else:
            self._wake()

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self._eof:
            self._eof = True
            self._queue_dropped_marker()
            self._wake()
            self._maybe_finish()

    def process_exited(self) -> None:
        self._has_exited = True
        self._ended_at = time.time()
        if self._timer is not None:
            self._timer.cancel()
        if not self._eof or _busy(self._streamer):
            self._drain = self._loop.call_later(self._drain_timeout, self._drain_expired)
        self._maybe_finish()

    # Output streaming, timeout and the end of the run.

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _queue_dropped_marker(self) -> None:
        if self._dropped:
            note = f"\n[natsched: {self._dropped} bytes of output not streamed, the consumer fell behind]\n"
            self._pending.append(note.encode())
            self._pending_bytes += len(self._pending[-1])
            self._dropped = 0

    def _take(self) -> bytes:
        chunk = self._pending.popleft()
        if len(chunk) > CHUNK:
            self._pending.appendleft(chunk[CHUNK:])
            chunk = chunk[:CHUNK]
        elif self._pending and len(chunk) + len(self._pending[0]) <= CHUNK:
            parts, size = [chunk], len(chunk)
            while self._pending and size + len(self._pending[0]) <= CHUNK:
                size += len(self._pending[0])
                parts.append(self._pending.popleft())
            chunk = b"".join(parts)
        self._pending_bytes -= len(chunk)
        return chunk

    async def _stream(self) -> None:
        while self._on_output is not None and (self._pending or not self._eof):
            if not self._pending:
                self._wakeup = self._loop.create_future()
                await self._wakeup
                continue
            chunk = self._take()
            try:
                await self._on_output(chunk)
            except Exception:  # noqa: BLE001 - a broken log consumer must not break the run
                log.exception("pid %d: output callback failed; the rest is not streamed", self.pid)
                self._on_output = None

    def _stream_done(self, _: asyncio.Task[None]) -> None:
        self._on_output = None
        self._pending.clear()
        self._maybe_finish()

    def _drain_expired(self) -> None:
        if not self._eof:
            log.warning(
                "pid %d exited but something it started holds its output open: stop reading", self.pid
            )
            assert self._transport is not None
            self._transport.close()
            self.pipe_connection_lost(1, None)
        if self._streamer is not None:
            self._streamer.cancel()

    def _expired(self) -> None:
        if not self._has_exited and self._terminator is None:
            self._timed_out = True
            self._terminate(self._spec.kill_grace)

    def _terminate(self, grace: float) -> None:
        if self._terminator is not None:
            return
        roots = []
        if not self._has_exited:
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(self.pid))
        tree = tree_of(roots)  # before any signal: see the module docstring
        signal_tree(self.pid, tree, signal.SIGTERM)
        self._terminator = self._loop.create_task(self._escalate(tree, grace), name=f"kill-{self.pid}")
        self._terminator.add_done_callback(lambda _: self._maybe_finish())

    async def _escalate(self, tree: list[psutil.Process], grace: float) -> None:
        # Whatever forked since the SIGTERM hangs under a survivor, or is in the group.
        everyone = tree_of(await wait_gone(tree, grace))
        signal_tree(self.pid, everyone, signal.SIGKILL)
        await wait_gone(everyone, REAP_TIMEOUT)

    def _maybe_finish(self) -> None:
        if self._result.done() or not (self._has_exited and self._eof):
            return
        if _busy(self._streamer) or _busy(self._terminator):
            return
        for handle in (self._timer, self._drain):
            if handle is not None:
                handle.cancel()
        assert self._transport is not None
        code = self._transport.get_returncode()
        self._transport.close()
        self._result.set_result(
            ProcessResult(
                pid=self.pid,
                exit_code=code if code is not None and code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                started_at=self.started_at,
                ended_at=self._ended_at,
                timed_out=self._timed_out,
                killed=self._killed,
                output_tail=bytes(self._tail),
                output_bytes=self._bytes,
            )
        )


class ProcessRunner:
    """Starts processes and keeps track of them until they end."""

    def __init__(self, *, drain_timeout: float = DRAIN_TIMEOUT, guardian: Guardian | None = None) -> None:
        self._running: set[RunningProcess] = set()
        self._guardian = guardian  # kills our process groups if this process dies
        self._accepting = True
        self._killing = False
        self._drain_timeout = drain_timeout
        if spawn.available():
            spawn.seal_descriptors()  # no descriptor of the agent reaches a job

    @property
    def running(self) -> int:
        return len(self._running)

    @staticmethod
    def startable_now(spec: ProcessSpec) -> bool:
        """Can :meth:`start_now` start ``spec`` (posix_spawn: no user, no cwd, pidfds here)?"""
        return spec.user is None and spawn.usable(spec.cwd, {})

    def start_now(self, spec: ProcessSpec, on_output: OutputCallback | None = None) -> RunningProcess:
        """:meth:`start` without a turn of the event loop, for a spec :meth:`startable_now` took:
        runs due together start back to back. Raises :class:`RunError`."""
        if not self._accepting:
            raise RunError("the agent is shutting down and starts no new runs")
        argv = spec.command
        loop = asyncio.get_running_loop()
        process = RunningProcess(spec, on_output, self._drain_timeout, loop)
        try:
            spawn.spawn(loop, argv, spec.env, process)
        except OSError as exc:
            raise RunError(start_failure(exc, argv[0], spec.cwd)) from None
        except ValueError as exc:  # a NUL byte in argv or env
            raise RunError(f"cannot start {argv[0]!r}: {exc}") from None
        self._track(process)
        return process

    async def start(self, spec: ProcessSpec, on_output: OutputCallback | None = None) -> RunningProcess:
        """Start ``spec``; returns as soon as the process exists. Raises :class:`RunError`."""
        if not self._accepting:
            raise RunError("the agent is shutting down and starts no new runs")
        identity, env = run_as(spec.user, spec.env)
        argv = spec.command
        loop = asyncio.get_running_loop()
        process = RunningProcess(spec, on_output, self._drain_timeout, loop)
        try:
            if spawn.usable(spec.cwd, identity):  # most jobs: no await before the pid is known
                spawn.spawn(loop, argv, env, process)
            elif spawn.available():  # a working directory or another user: Popen, same watching
                spawn.spawn_as(loop, argv, env, process, cwd=spec.cwd, identity=identity)
            else:
                await loop.subprocess_exec(
                    lambda: process,
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=spec.cwd,
                    start_new_session=True,
                    **identity,
                )
        except OSError as exc:
            raise RunError(start_failure(exc, argv[0], spec.cwd)) from None
        except ValueError as exc:  # a NUL byte in argv, env or cwd
            raise RunError(f"cannot start {argv[0]!r}: {exc}") from None
        self._track(process)
        if self._killing:  # spawned while shutdown was already killing: it would be missed
            await process.kill()
        return process

    def _track(self, process: RunningProcess) -> None:
        self._running.add(process)
        process._result.add_done_callback(lambda _: self._running.discard(process))
        if self._guardian is not None:
            guardian = self._guardian
            guardian.watch(process.pid)  # its own session: the group id is its pid
            process._result.add_done_callback(lambda _: guardian.forget(process.pid))

    async def shutdown(self, grace: float) -> None:
        """Start nothing new; let running processes end within ``grace``, then kill the rest.

        Killed processes get their spec's ``kill_grace`` between SIGTERM and SIGKILL;
        returns when every process has ended.
        """
        self._accepting = False
        if self._running:
            await asyncio.wait([p._result for p in self._running], timeout=grace)
        self._killing = True
        left = list(self._running)
        for process in left:
            await process.kill()
        if left:
            # SIGKILL cannot be ignored: this bound is slack for a tree stuck in the kernel.
            bound = max(p._spec.kill_grace for p in left) + REAP_TIMEOUT + self._drain_timeout + 1
            await asyncio.wait([p._result for p in left], timeout=bound)


def install_fast_child_watcher() -> None:
    """Use pidfd child watching (3.12's default) instead of 3.11's thread per child process.

    Call before the event loop starts. Falls back silently where pidfd is missing.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
