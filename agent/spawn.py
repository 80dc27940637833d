"""Starting a job's process without ``loop.subprocess_exec``: ``os.posix_spawn`` and a pidfd.

Why: ``subprocess_exec`` builds a ``Popen``, then connects its pipe in a later turn of the
event loop, and awaits that turn: ~0.35 ms per start on an idle machine, and under load
every run request, cron slot or burst member waits behind whatever else is ready in the
loop. ``posix_spawn`` (glibc: ``clone(CLONE_VM|CLONE_VFORK)`` + exec, no copy of the
agent's memory) returns once the program is exec'ed (~0.1 ms), with the exec error, if
any, raised here; the output pipe and a pidfd (readable when the process exits) are then
watched with ``loop.add_reader``: no thread, no task, no extra loop turn before the
caller has its pid.

What ``Popen`` does for us and this does by hand: the program is looked up on the
*job's* ``PATH``; signals Python ignores (SIGPIPE, SIGXFSZ) are reset to their default;
no descriptor above 2 reaches the job: Python's own are close-on-exec, and the ones the
agent inherited are made so when its runner is created (``seal_descriptors``).
A job with ``cwd`` or ``user`` (posix_spawn cannot chdir or change ids on 3.11) starts
with ``subprocess.Popen`` instead (``spawn_as``), watched the same way, so no job start
goes through the event loop's own subprocess support; only a platform without pidfds
takes ``loop.subprocess_exec`` (see ``available``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import os
import signal
import subprocess
from collections.abc import Mapping
from typing import Any, Protocol

READ_SIZE = 256 * 1024  # as asyncio's pipe transport reads
_DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)
_devnull: int | None = None


class ProcessProtocol(Protocol):
    """The part of ``asyncio.SubprocessProtocol`` the runner's RunningProcess implements."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def pipe_data_received(self, fd: int, data: bytes) -> None: ...
    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None: ...
    def process_exited(self) -> None: ...


@functools.cache  # asked at every start; the answer does not change while the agent runs
def available() -> bool:
    """Does this platform have posix_spawn and pidfds?"""
    return hasattr(os, "posix_spawn") and hasattr(os, "pidfd_open") and os.path.isdir("/proc/self/fd")


def usable(cwd: str | None, identity: Mapping[str, object]) -> bool:
    """Can this start take the posix_spawn path?"""
    return cwd is None and not identity and available()


def find_program(program: str, env: Mapping[str, str]) -> str:
    """``program`` as Popen would run it: as given with a slash, else the first hit on the job's PATH."""
    if "/" in program:
        return program
    for directory in os.get_exec_path(dict(env)):
        candidate = os.path.join(directory, program)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def above_stdio(fd: int) -> int:
    """``fd``, moved above 0-2 if it landed there (an agent started with stdio closed):
    a dup2 onto itself would leave it close-on-exec, so the job would lose it."""
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def seal_descriptors() -> None:
    """Make every descriptor above 2 close-on-exec, so a job inherits none of them.

    Python opens all of its own descriptors close-on-exec; what is left is what the agent
    itself inherited (from a shell, a service manager). Done when a runner is created
    (once, at the agent's start): scanning ``/proc/self/fd`` per start cost ~1 ms with 200
    runs going (two descriptors each), which a burst of due jobs paid one after another.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                os.set_inheritable(fd, False)


class SpawnedProcess(asyncio.SubprocessTransport):
    """The transport of a posix_spawn'ed process: its pid, return code, and its output pipe."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        output: int,
        protocol: ProcessProtocol,
        *,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._pid = pid
        # Held until reaped, then told the code: a Popen dropped unreaped goes on subprocess's
        # list of processes to poll, and its waitpid there would take the code from us.
        self._popen = popen
        self._protocol = protocol
        self._returncode: int | None = None
        self._output: int | None = output
        self._pidfd: int | None = os.pidfd_open(pid)
        protocol.connection_made(self)
        loop.add_reader(output, self._read)
        loop.add_reader(self._pidfd, self._reap)

    def get_pid(self) -> int:
        return self._pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def close(self) -> None:
        """Stop reading the output (the process is still reaped when it exits)."""
        self._close_output()

    def is_closing(self) -> bool:
        return self._output is None

    def _read(self) -> None:
        assert self._output is not None
        try:
            data = os.read(self._output, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_output()
            self._protocol.pipe_connection_lost(1, exc)
            return
        if data:
            self._protocol.pipe_data_received(1, data)
        else:
            self._close_output()
            self._protocol.pipe_connection_lost(1, None)

    def _close_output(self) -> None:
        if self._output is not None:
            self._loop.remove_reader(self._output)
            os.close(self._output)
            self._output = None

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the code is lost
            pid, status = self._pid, 255 << 8
        if pid == 0:
            return  # not exited after all (a spurious wake-up)
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._returncode = os.waitstatus_to_exitcode(status)
        if self._popen is not None:
            self._popen.returncode = self._returncode
            self._popen = None
        self._protocol.process_exited()


def _devnull_fd() -> int:
    global _devnull
    if _devnull is None:
        _devnull = above_stdio(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    return _devnull


def _output_pipe() -> tuple[int, int]:
    """(read end: ours, non-blocking; write end: the job's stdout and stderr, blocking)."""
    read_end, write_end = (above_stdio(fd) for fd in os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))
    os.set_blocking(write_end, True)  # the job's stdout: blocking, as a normal program expects
    return read_end, write_end


def spawn_as(
    loop: asyncio.AbstractEventLoop,
    argv: tuple[str, ...],
    env: Mapping[str, str],
    protocol: ProcessProtocol,
    *,
    cwd: str | None,
    identity: Mapping[str, Any],
) -> SpawnedProcess:
    """:func:`spawn` for a job with a working directory or another user (``identity``: the
    ``user``/``group``/``extra_groups`` of :func:`agent.runas.run_as`), which posix_spawn
    cannot do on 3.11: ``subprocess.Popen`` (fork and exec, in C), then the same pidfd and pipe.

    Not ``loop.subprocess_exec``: that is the event loop's, and uvloop's refuses ``user``.
    Popen's own reaping is kept out of the way (see :class:`SpawnedProcess`). Raises OSError
    as Popen does (the missing program or directory named), ValueError for a NUL byte.
    """
    read_end, write_end = _output_pipe()
    try:
        popen = subprocess.Popen(
            argv,
            stdin=_devnull_fd(),
            stdout=write_end,
            stderr=write_end,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
            **identity,
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return SpawnedProcess(loop, popen.pid, read_end, protocol, popen=popen)


def spawn(
    loop: asyncio.AbstractEventLoop, argv: tuple[str, ...], env: Mapping[str, str], protocol: ProcessProtocol
) -> SpawnedProcess:
    """Start ``argv`` in its own session, stdin /dev/null, stdout and stderr on one pipe.

    Raises OSError as Popen would (FileNotFoundError for an unknown program), ValueError
    for a NUL byte in argv or env.
    """
    program = find_program(argv[0], env)
    read_end, write_end = _output_pipe()
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, _devnull_fd(), 0),
            (os.POSIX_SPAWN_DUP2, write_end, 1),
            (os.POSIX_SPAWN_DUP2, write_end, 2),
        ]
        pid = os.posix_spawn(
            program, list(argv), env, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return SpawnedProcess(loop, pid, read_end, protocol)
