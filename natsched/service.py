"""A base for long-running services: an async context manager that owns its tasks.

Nothing is fire-and-forget: every background task is started through
:meth:`Service.spawn`, and leaving the context cancels and awaits them all. A task
that crashes is logged and, unless it is marked ``critical``, does not take the
service down: a scheduler must keep scheduling.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self

import nats.errors
import nats.js.errors
from nats.aio.client import Client

from natsched.connection import closed_for_good
from natsched.errors import NatschedError, NotConnectedError, StartUnansweredError

log = logging.getLogger(__name__)
CANCEL_ROUNDS = 20
CANCEL_WAIT = 0.25
SHUTDOWN_DEADLINE = 10.0  # from the signal to the process gone, whatever hangs
RESTART_MIN = 0.5
RESTART_MAX = 5.0
# How long a service whose start JetStream did not answer keeps starting again: longer than a
# cluster takes to elect new stream leaders after losing a node (seconds, 10-20 s under load).
START_RETRY_WINDOW = 60.0
# JetStream's answers while it has no leader for the stream or the meta group: passing trouble
# (a service's start is tried again; the master's job index asks its bucket again).
JETSTREAM_UNANSWERED = (
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
SETTLE_AFTER = 1.0  # seconds after start-up's last step before its heap is frozen (settle_heap)
_UNANSWERED_WHY: dict[type[BaseException], str] = {  # nats-py's own texts say little ("code=None")
    nats.errors.NoRespondersError: "no responders",
    nats.js.errors.NoStreamResponseError: "no stream response",
    nats.js.errors.ServiceUnavailableError: "service unavailable",
}


async def settle_heap(service: Service) -> None:
    """Once the service has warmed up (and ``SETTLE_AFTER`` more for the work that set going,
    such as the mirror scheduler taking up the jobs just synced): collect, then freeze what
    is left. Only for a service that is the process (``serve``): freezing is process-wide.

    Why: what start-up builds (modules, the job index or cache, connections) lives as long as
    the process, yet every full collection walked all of it again: a master paused 30-88 ms per
    gen-2 collection, collecting nothing, an agent 19-29 ms, each time holding every request
    and every due start behind it. Frozen objects are left out of collections (reference
    counting still frees them); the collection just before leaves no garbage among them. The
    cost: a frozen object that later becomes part of a garbage cycle is never freed, so
    memory can grow by at most what was frozen.
    """
    await service.warmed_up()
    await asyncio.sleep(SETTLE_AFTER)
    begun = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "start-up settled: %d objects frozen out of garbage collection (%.0f ms)",
        gc.get_freeze_count(),
        (time.perf_counter() - begun) * 1000,
    )


class Service:
    """Owns background tasks; subclasses start them in ``start`` and clean up in ``stop``."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed: asyncio.Future[BaseException] | None = None
        self.stopping = False  # leaving the context: a closed connection is expected now

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str, critical: bool = False
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(t, critical))
        return task

    def _task_done(self, task: asyncio.Task[Any], critical: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if critical and isinstance(exc, NatschedError):
            # A deliberate stop with a readable reason: run_forever raises it and the caller
            # reports it in one line (the CLI: "error: ..."), no traceback.
            log.debug("task %s stopped the service: %s", task.get_name(), exc, exc_info=exc)
        else:
            log.error("task %s crashed: %r", task.get_name(), exc, exc_info=exc)
        if critical and self.failed is not None and not self.failed.done():
            self.failed.set_result(exc)

    async def connection_closed(self, reason: str) -> None:
        """The NATS client closed the connection for good (it will not reconnect): stop the
        service with one line and a non-zero exit, so a supervisor (systemd) restarts it."""
        if self.stopping or self.failed is None or self.failed.done():
            return
        self.failed.set_result(
            NotConnectedError(
                f"the connection to NATS was closed for good ({reason}); exiting to be restarted"
            )
        )

    def keep_running(self, work: Callable[[], Coroutine[Any, Any, Any]], *, name: str) -> asyncio.Task[Any]:
        """A critical task that NATS trouble does not end: ``work()`` is started again (after
        0.5 s, doubling to 5 s) when it fails with anything but a NatschedError.

        JetStream is unavailable for seconds when a cluster node goes (no stream leader: every
        KV write fails with NoStreamResponseError, a new watch times out): a watch or the
        leader's duties must outlive that, not stop the service.
        """

        async def keep() -> None:
            loop = asyncio.get_running_loop()
            delay = RESTART_MIN
            while True:
                started = loop.time()
                try:
                    await work()
                    return
                except NatschedError:
                    raise
                except Exception as exc:  # noqa: BLE001 - NATS trouble, most likely: start over
                    if self.stopping:  # see JobSync.stopping: a cancellation turned into errors
                        raise asyncio.CancelledError from exc
                    if loop.time() - started > RESTART_MAX * 2:
                        delay = RESTART_MIN  # it ran fine for a while: a new episode
                    log.warning("%s failed (%r); starting it again in %gs", name, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(RESTART_MAX, delay * 2)

        return self.spawn(keep(), name=name, critical=True)

    def watch_connection(self, nc: Client) -> None:
        """Stop the service (one line, non-zero exit) if ``nc`` is ever closed for good."""

        async def watch() -> None:
            await self.connection_closed(await closed_for_good(nc))

        self.spawn(watch(), name="connection-watch")

    async def start(self) -> None:
        """Override: connect and spawn tasks."""

    async def warmed_up(self) -> None:
        """Returns once start-up's own work is done (a master's job index loaded, an agent's
        first sync): what was built by then lives as long as the process (``settle_heap``)."""

    async def stop(self) -> None:
        """Override: release resources after the tasks were cancelled."""

    def stop_allowance(self) -> float:
        """Override: seconds ``stop`` may rightly take beyond ``SHUTDOWN_DEADLINE`` (an agent
        gives its running jobs a grace period, then kills them and records it)."""
        return 0.0

    async def cancel_tasks(self) -> None:
        # Cancel again while tasks linger: asyncio.wait_for (used inside nats-py's connect)
        # can swallow a cancellation that races with its own completion.
        pending = set(self._tasks)
        for _ in range(CANCEL_ROUNDS):
            if not pending:
                return
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT)
        for task in pending:
            # Where it waits: the frame that keeps swallowing the cancellations.
            where = " <- ".join(
                f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
                for frame in reversed(task.get_stack(limit=4))
            )
            log.error(
                "task %s did not stop after %d cancellations (waiting in %s)",
                task.get_name(),
                CANCEL_ROUNDS,
                where or "?",
            )

    async def __aenter__(self) -> Self:
        self.failed = asyncio.get_running_loop().create_future()
        try:
            await self.start()
        except BaseException as exc:
            self.stopping = True
            await self.cancel_tasks()
            await self.stop()
            failure = self._start_failure(exc)
            if failure is exc:
                raise
            raise failure from None
        return self

    def _start_failure(self, exc: BaseException) -> BaseException:
        """What a failed start reports: NATS trouble as one NotConnectedError line, not a traceback."""
        if isinstance(exc, NatschedError) or not isinstance(exc, Exception):
            return exc
        if self.failed is not None and self.failed.done() and isinstance(self.failed.result(), NatschedError):
            return self.failed.result()  # e.g. the connection was closed for good meanwhile
        if isinstance(exc, JETSTREAM_UNANSWERED):
            return StartUnansweredError(
                f"could not start: JetStream did not answer ({_UNANSWERED_WHY.get(type(exc), 'timeout')}); "
                "is JetStream enabled on the server, or is its cluster still electing leaders?"
            )
        if isinstance(exc, nats.errors.Error | OSError):
            return NotConnectedError(f"could not start: NATS: {exc or type(exc).__name__}")
        return exc

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stopping = True
        await self.cancel_tasks()
        await self.stop()

    async def run_forever(self) -> None:
        """Block until cancelled or a critical task fails (then raise its error)."""
        assert self.failed is not None, "enter the service first"
        error = await self.failed
        raise error


def _quiet_about_lost_connections(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """nats-py closes a connection the server refused in a task nobody awaits; when the socket
    is already gone that task ends with ConnectionResetError, which asyncio would print as a
    traceback after the service's own one-line error. A lost connection is no bug."""
    exc = context.get("exception")
    future = context.get("future")
    coro = getattr(future, "get_coro", lambda: None)()
    in_nats = getattr(coro, "__qualname__", "").startswith("Client.")  # nats-py's own tasks
    if isinstance(exc, ConnectionError) or (in_nats and isinstance(exc, asyncio.InvalidStateError)):
        # InvalidStateError: nats-py's reconnect task, when the client was closed meanwhile.
        log.debug("%s: %r", context.get("message"), exc)
        return
    loop.default_exception_handler(context)


def _give_up_stopping(deadline: float) -> None:
    log.error("did not stop within %gs of the signal; exiting now", deadline)
    logging.shutdown()
    os._exit(1)


async def serve(service: Service, *, restart: Callable[[], Service] | None = None) -> None:
    """Run a service until SIGINT/SIGTERM, then leave its context cleanly (exit code 0).

    ``restart`` makes a fresh service when JetStream did not answer the start (a cluster
    electing, a server restarting): it is started again, with a warning each time, for up to
    ``START_RETRY_WINDOW`` seconds instead of exiting at the first timeout.
    """
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopping = asyncio.Event()

    def on_signal() -> None:
        if not stopping.is_set():
            log.info("stopping (signal received)")
            stopping.set()
            main.cancel()
            # The last line of defence for "stops within seconds": whatever hangs in the
            # shutdown (a task that swallows its cancellation, a blocked loop), the process ends.
            # Not before the service's own stop could end: an agent's running jobs get their
            # grace, and a deadline shorter than that exited 1 with their final events unsent.
            seconds = SHUTDOWN_DEADLINE + service.stop_allowance()
            deadline = threading.Timer(seconds, _give_up_stopping, (seconds,))
            deadline.daemon = True
            deadline.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loop.set_exception_handler(_quiet_about_lost_connections)
    try:
        await _start_and_run(service, restart, stopping)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _start_and_run(
    service: Service, restart: Callable[[], Service] | None, stopping: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + START_RETRY_WINDOW
    delay = RESTART_MIN
    while True:
        try:
            async with service:
                # A signal during the start cancels it, but Python 3.11's asyncio.wait_for (in
                # nats-py's requests) can swallow a cancellation that races with its result: the
                # start then ends normally, and waiting here would outlast the signal.
                if not stopping.is_set():
                    service.spawn(settle_heap(service), name="settle-heap")
                    await service.run_forever()
            return
        except StartUnansweredError as exc:
            if restart is None or loop.time() + delay > give_up_at:
                raise
            if stopping.is_set():
                return
            log.warning("%s (starting again in %gs)", exc, delay)
            await asyncio.sleep(delay)
            delay = min(RESTART_MAX, delay * 2)
            service = restart()
