"""What a (re)started agent does with the runs its previous life left in the journal.

- A run that was going: its processes died with the agent (the guardian killed its process
  group; whatever is left of the group is killed here). It is recorded ``lost`` with the
  reason, after its ``started`` event (which may never have gone out), so it is closed
  even when the agent came back before the master noticed it was gone. A load-balance
  run's cluster lock is released once NATS is there.
- A run that was waiting its turn (overlap ``queue``, a pause with ``--queue``, the
  cluster lock) is queued again, with the same run id, trigger and arguments. Load-balance
  runs wait for NATS (their turn is a cluster-wide lock); the others go back at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import psutil

from agent.executor import JobExecutor
from agent.journal import HeldRun
from agent.locks import ClusterLocks
from natsched.events import RunEvent, RunState
from natsched.models import Mode

log = logging.getLogger(__name__)


def kill_leftovers(pgid: int, since: float) -> int:
    """SIGKILL the processes still in the run's process group; how many there were."""
    killed = 0
    for process in psutil.process_iter():
        try:
            # A group id is never reused while the group has members; the start time guards
            # against a new group whose leader got the pid after ours ended.
            if os.getpgid(process.pid) != pgid or process.create_time() < since - 1.0:
                continue
            process.kill()
            killed += 1
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return killed


class Recovery:
    def __init__(self, left: list[HeldRun], executor: JobExecutor) -> None:
        self._left = left
        self._executor = executor
        self._locked: list[RunEvent] = []  # lost load-balance runs: their lock goes once connected
        self._waiting: list[HeldRun] = []  # load-balance runs to queue again once connected

    async def at_start(self) -> None:
        """Close the runs that were going; queue again those that were waiting (not load-balance)."""
        for held in self._left:
            if held.event.state is RunState.QUEUED:
                if held.spec is not None and held.spec.mode is Mode.LOAD_BALANCE:
                    self._waiting.append(held)
                else:
                    await self._queue_again(held)
            else:
                await self._close(held)
        self._left = []

    async def once_connected(self, locks: ClusterLocks) -> None:
        """Release the cluster locks of the lost runs; queue the load-balance runs again."""
        locked, self._locked = self._locked, []
        for event in locked:
            with contextlib.suppress(Exception):  # a lock left behind goes with a takeover
                await locks.release(event.job, event.run_id)
        waiting, self._waiting = self._waiting, []
        for held in waiting:
            await self._queue_again(held)

    async def _close(self, held: HeldRun) -> None:
        started, executor = held.event, self._executor
        killed = kill_leftovers(started.pid, started.started_at or 0.0) if started.pid else 0
        reason = f"agent {executor.agent} stopped while the run was going (restarted since)"
        reason += f"; {killed} leftover process(es) killed" if killed else "; its processes ended with it"
        log.warning("run %s of %s: %s", started.run_id, started.job, reason)
        await executor.outbox.publish(started)  # it may never have gone out (deduplicated if it did)
        await executor.publish(started.moved_to(RunState.LOST, reason=reason, ended_at=time.time()))
        if held.locked:
            self._locked.append(started)  # released only if this run still holds it

    async def _queue_again(self, held: HeldRun) -> None:
        event = held.event
        if held.spec is None:
            await self._executor.publish(
                event.moved_to(RunState.SKIPPED, reason="agent restarted; the queued run could not be read")
            )
            return
        log.info("run %s of %s was queued before the restart: queued again", event.run_id, event.job)
        try:
            await self._executor.launch(
                held.spec,
                trigger=event.trigger,
                scheduled_at=event.scheduled_at,
                detail=event.detail,
                run_id=event.run_id,
                attempt=event.attempt,
                args=held.args,
                env=held.env,
            )
        except Exception:  # noqa: BLE001 - one bad run must not stop the agent from starting
            log.exception("queued run %s of %s could not be queued again", event.run_id, event.job)
