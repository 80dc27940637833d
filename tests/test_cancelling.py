"""A stopping service's tasks stop, even when Python 3.11's TaskGroup turns their cancellation
into an ExceptionGroup: keep_running's start-over loop (and the agent's job sync, see
JobSync.stopping) catch Exception to start over."""

from __future__ import annotations

import asyncio

from natsched.service import Service


async def _duties_failing_as_they_are_cancelled(started: list[float]) -> None:
    """A TaskGroup whose child fails when cancelled (as a NATS call does when the connection
    closes meanwhile): the group raises ExceptionGroup([RuntimeError]), not CancelledError."""

    async def watch() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("nats: connection closed") from None

    started.append(asyncio.get_running_loop().time())
    async with asyncio.TaskGroup() as group:
        group.create_task(watch())


async def test_a_stopping_services_task_stops_even_if_its_group_fails_as_it_is_cancelled() -> None:
    service = Service()
    started: list[float] = []
    task = service.keep_running(lambda: _duties_failing_as_they_are_cancelled(started), name="duties")
    await asyncio.sleep(0.05)
    service.stopping = True  # as Service.__aexit__ does before it cancels its tasks
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert done, "still running 2 s after it was cancelled (the cancellation was swallowed)"
    assert task.cancelled()
    assert len(started) == 1, "the duties were started again after their cancellation"
