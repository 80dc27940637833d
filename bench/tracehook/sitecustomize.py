"""Loaded by every Python process that has this directory on PYTHONPATH (``bench.pathtrace``).

With ``NATSCHED_TRACE_DIR`` set, it wraps the steps of the trigger -> started path in the
master and the agent with timestamps (CLOCK_MONOTONIC: one clock for all processes of the
machine) and writes them to ``<dir>/<pid>.txt`` at exit. Nothing here runs otherwise.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

_MARKS: list[tuple[int, str]] = []

# (module, attribute path, mark at entry, mark at exit ('' = none))
STEPS = [
    ("natsched.master.external", "TriggerHandler._handle", "master: trigger in", "master: reply out"),
    ("natsched.master.dispatch", "Dispatcher._ask_once", "master: request out", "master: answer in"),
    ("agent.responder", "Responder._on_run", "agent: request in", ""),
    ("agent.responder", "Responder._claim", "agent: claim out", "agent: claim won"),
    ("agent.journal", "RunJournal.flush", "agent: journal commit", "agent: journal committed"),
    ("agent.spawn", "spawn", "agent: spawn", "agent: spawned"),
    ("agent.responder", "Responder._reply", "agent: reply out", ""),
    # nats-py's flusher writing what was published (the service's name is set below)
    ("nats.aio.transport", "TcpTransport.writelines", "{service}: socket write", ""),
]
SERVICE = "agent" if os.path.basename(sys.argv[0]).startswith("natsched-agent") else "master"


def mark(name: str) -> None:
    _MARKS.append((time.monotonic_ns(), name))


def _wrap(fn: Callable[..., Any], enter: str, leave: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def traced_async(*args: Any, **kwargs: Any) -> Any:
            mark(enter)
            try:
                return await fn(*args, **kwargs)
            finally:
                if leave:
                    mark(leave)

        return traced_async

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        mark(enter)
        try:
            return fn(*args, **kwargs)
        finally:
            if leave:
                mark(leave)

    return traced


def _install() -> None:
    for module_name, path, enter, leave in STEPS:
        try:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            setattr(owner, name, _wrap(getattr(owner, name), enter.format(service=SERVICE), leave))
        except (ImportError, AttributeError) as exc:  # renamed since: the bench says which step is missing
            print(f"pathtrace: cannot trace {module_name}.{path}: {exc}", file=sys.stderr)


def _dump() -> None:
    if _MARKS:
        with open(os.path.join(os.environ["NATSCHED_TRACE_DIR"], f"{os.getpid()}.txt"), "w") as out:
            out.writelines(f"{t} {name}\n" for t, name in _MARKS)


if os.environ.get("NATSCHED_TRACE_DIR"):
    _install()
    atexit.register(_dump)
