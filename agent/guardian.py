"""Job processes die with their agent, also when the agent is killed -9.

Each job leads its own process group (so a timeout can kill its tree), which also means
nothing stops it when the agent dies: it would run on as an orphan while the master marks
it lost and may start it again elsewhere. ``PR_SET_PDEATHSIG`` would need a ``preexec_fn``
(4x slower spawns: no vfork) and reaches only the group leader, not what it started.

Instead, one small guardian process per agent (its own session, so a signal to the
agent's group does not reach it) reads the agent's process groups from a pipe: ``+pgid``
when a job starts, ``-pgid`` when it has ended. The pipe's write end lives only in the
agent (Python fds are not inherited), so when the agent dies, however it dies, the
guardian reads end-of-file and SIGKILLs every group still registered, then exits. A
registration costs one small pipe write on the agent's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# Runs as `python -I -S guard_process.py`: a few standard modules, no site, no agent package.
_GUARD = str(Path(__file__).with_name("guard_process.py"))
FORGET_DELAY = 0.05  # seconds an ended group's removal may wait for the next write


class Guardian:
    """The agent's side: ``start()`` once, then ``watch(pgid)`` / ``forget(pgid)`` per job."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._groups: set[int] = set()
        self._forgotten: list[str] = []  # "-pgid" lines not sent yet (see forget)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", _GUARD],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self._process.stdin is not None
        os.set_blocking(self._process.stdin.fileno(), False)
        self._forgotten.clear()  # a fresh guardian knows only the groups registered now
        if self._groups:
            self._send("".join(f"+{pgid}\n" for pgid in self._groups))

    def watch(self, pgid: int) -> None:
        self._groups.add(pgid)
        self._send(self._take_forgotten() + f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        """Sent with the next registration, or within FORGET_DELAY: each write wakes the
        guardian process, and a run cost two. An agent killed within FORGET_DELAY of a run's
        end has that group killed too: nothing, unless the run left a process in it."""
        self._groups.discard(pgid)
        self._forgotten.append(f"-{pgid}\n")
        if len(self._forgotten) == 1:
            try:
                asyncio.get_running_loop().call_later(FORGET_DELAY, self._send_forgotten)
            except RuntimeError:  # no loop (a plain caller): at once
                self._send_forgotten()

    def _take_forgotten(self) -> str:
        lines, self._forgotten = "".join(self._forgotten), []
        return lines

    def _send_forgotten(self) -> None:
        if self._forgotten:
            self._send(self._take_forgotten())

    async def close(self) -> None:
        """At a clean stop: the guardian kills what is still registered (nothing, normally) and exits."""
        self._send_forgotten()  # a clean stop leaves behind what ended runs left, as before
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            await asyncio.to_thread(process.wait, 2.0)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait)

    def _send(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            return
        try:
            os.write(process.stdin.fileno(), line.encode())
        except OSError as exc:  # gone (killed by someone) or stuck (pipe full): start a fresh one
            log.warning("job guardian %d unusable (%r); starting a new one", process.pid, exc)
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.wait(1.0)
            self.start()
