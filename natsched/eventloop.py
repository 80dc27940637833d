"""The event loop of the long-running services (master, agent): uvloop where it is installed.

Why: a service's work per run is mostly event-loop overhead around NATS messages (nats-py's
reads, writes, callbacks, timers), which uvloop's C loop does for less CPU; measured on an
agent, 1,140-1,480 runs/s on uvloop against 1,010-1,030 on the stock loop (32 in flight,
README "Measured"). Nothing of natsched depends on the loop's own subprocess support (jobs
start with posix_spawn or Popen, watched through pidfds: ``agent/spawn.py``), which is
where uvloop differs (it refuses ``user=``); an agent on a platform without pidfds takes
``loop.subprocess_exec`` and therefore keeps the stock loop.

``NATSCHED_EVENT_LOOP=asyncio`` picks the stock loop anyway (``uvloop``, the default, falls
back to it when uvloop is not installed). Short CLI commands keep the stock loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
CHOICE = "NATSCHED_EVENT_LOOP"


def loop_factory(*, uvloop_ok: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for the stock loop (asked for, not installed, or not ok)."""
    choice = os.environ.get(CHOICE, "uvloop").strip().lower() or "uvloop"
    if choice not in ("uvloop", "asyncio"):
        log.warning("%s=%r is neither 'uvloop' nor 'asyncio': using uvloop if installed", CHOICE, choice)
    if choice == "asyncio" or not uvloop_ok:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, uvloop_ok: bool = True) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` picks; logs which (debug)."""
    factory = loop_factory(uvloop_ok=uvloop_ok)
    with asyncio.Runner(loop_factory=factory) as runner:
        log.debug("event loop: %s", type(runner.get_loop()).__module__)
        return runner.run(main)
