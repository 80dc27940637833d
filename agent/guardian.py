"""Job processes die with their agent, also when the agent is killed -9.

Each job leads its own process group (so a timeout can kill its tree), which also means
nothing stops it when the agent dies: it would run on as an orphan while the master marks
it lost and may start it again elsewhere. ``PR_SET_PDEATHSIG`` would need a ``preexec_fn``
(4x slower spawns: no vfork) and reaches only the group leader, not what it started.

Instead, one small guardian process per agent (its own session, so a signal to the
agent's group does not reach it) waits for the end of a pipe whose write end lives only in
the agent (Python fds are not inherited): when the agent dies, however it dies, the
guardian reads end-of-file, SIGKILLs every process group registered at that moment, then
exits.

The registry is shared memory (a memfd, mapped by the agent, inherited by the guardian), not
messages on the pipe: registering a group is a store into memory, with no system call and
no wake-up of the guardian (a pipe write per run start woke it, a context switch on the
agent's hot path, 2-7 % of its loop's time). The guardian reads the registry once, after the
agent is gone, and what the agent stored before it died is there (the pages are the
kernel's, not the agent's). A group is registered right after its spawn, in the same step
of the loop, as before; a slot holds the group id and its complement, so a slot being
written when the agent died (half of it stored) names no group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from agent.spawn import above_stdio

log = logging.getLogger(__name__)

# Runs as `python -I -S guard_process.py <registry fd>`: a few standard modules, no site, no agent package.
_GUARD = str(Path(__file__).with_name("guard_process.py"))
SLOT = struct.Struct("<ii")  # pgid, ~pgid (see the module docstring); guard_process.py reads the same
FIRST_SLOTS = 512  # doubled whenever full


def _registry_file() -> int:
    """A file only in memory where the platform has memfds; else an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return above_stdio(os.memfd_create("natsched-guardian", os.MFD_CLOEXEC))
    with tempfile.TemporaryFile() as file:
        return above_stdio(os.dup(file.fileno()))  # close-on-exec, as Python's descriptors are


class Guardian:
    """The agent's side: ``start()`` once, then ``watch(pgid)`` / ``forget(pgid)`` per job."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._slots: dict[int, int] = {}  # pgid -> its slot in the registry
        self._free: list[int] = []  # slots to reuse, the lowest last
        self._exit_watch: tuple[asyncio.AbstractEventLoop, int] | None = None  # the guardian's pidfd

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._map is None:
            self._fd = _registry_file()
            self._grow(FIRST_SLOTS)
        # A guardian started again (the first was killed) reads the same registry: it knows
        # every group registered so far.
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", _GUARD, str(self._fd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
            pass_fds=(self._fd,),
        )
        self._watch_exit(self._process)

    def _watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        """A guardian that exits (killed by someone) is replaced at once, seen through its pidfd
        in the event loop: nothing to check per registration. Without a loop (or pidfds),
        ``watch`` polls it instead."""
        try:
            loop = asyncio.get_running_loop()
            pidfd = os.pidfd_open(process.pid)
        except (RuntimeError, AttributeError, OSError):
            return
        loop.add_reader(pidfd, self._exited, process)
        self._exit_watch = (loop, pidfd)

    def _unwatch_exit(self) -> None:
        if self._exit_watch is not None:
            loop, pidfd = self._exit_watch
            self._exit_watch = None
            if not loop.is_closed():  # a guardian outliving its loop (a plain caller's close)
                loop.remove_reader(pidfd)
            os.close(pidfd)

    def _exited(self, process: subprocess.Popen[bytes]) -> None:
        self._unwatch_exit()
        if process is self._process:
            process.wait()
            self._restart(process)

    def _grow(self, slots: int) -> None:
        old = self._map
        used = len(old) // SLOT.size if old is not None else 0
        os.ftruncate(self._fd, slots * SLOT.size)  # new slots read as zeros: no group
        self._map = mmap.mmap(self._fd, slots * SLOT.size)
        if old is not None:
            old.close()
        self._free[:0] = range(slots - 1, used - 1, -1)

    def watch(self, pgid: int) -> None:
        process = self._process
        if process is None or self._map is None:
            return
        if self._exit_watch is None and process.poll() is not None:
            self._restart(process)  # killed by someone: a fresh one, before this job is counted on
        if not self._free:
            self._grow(2 * len(self._map) // SLOT.size)
        slot = self._slots.get(pgid)
        if slot is None:
            slot = self._slots[pgid] = self._free.pop()
        SLOT.pack_into(self._map, slot * SLOT.size, pgid, ~pgid)

    def forget(self, pgid: int) -> None:
        """The group's run ended: the guardian leaves it alone (what it left running is legitimate)."""
        slot = self._slots.pop(pgid, None)
        if slot is not None and self._map is not None:
            SLOT.pack_into(self._map, slot * SLOT.size, 0, 0)
            self._free.append(slot)

    def _restart(self, process: subprocess.Popen[bytes]) -> None:
        log.warning("job guardian %d exited (%s); starting a new one", process.pid, process.returncode)
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        self.start()

    async def close(self) -> None:
        """At a clean stop: the guardian kills what is still registered (nothing, normally) and exits."""
        process, self._process = self._process, None
        self._unwatch_exit()  # its exit now is the end asked for, not one to repair
        if process is not None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                await asyncio.to_thread(process.wait, 2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)
            self._fd = -1
            self._slots.clear()
            self._free.clear()
