"""A job's process tree: every descendant (also those that called setsid), whether they are
gone, and signalling them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import psutil

_POLL = 0.02


def tree_of(roots: list[psutil.Process]) -> list[psutil.Process]:
    """The roots and all their descendants (by parent links, which setsid does not cut)."""
    found: dict[int, psutil.Process] = {}
    for root in roots:
        with contextlib.suppress(psutil.Error):
            found.update((p.pid, p) for p in [root, *root.children(recursive=True)])
    return list(found.values())


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def wait_gone(tree: list[psutil.Process], seconds: float) -> list[psutil.Process]:
    """The processes of ``tree`` still alive after at most ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    tree = [p for p in tree if alive(p)]
    while tree and loop.time() < deadline:
        await asyncio.sleep(_POLL)  # noqa: ASYNC110 - nothing signals the end of a process not our child
        tree = [p for p in tree if alive(p)]
    return tree


def signal_tree(pgid: int, processes: list[psutil.Process], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)  # psutil checks the pid was not reused meanwhile
