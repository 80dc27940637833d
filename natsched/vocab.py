"""The run vocabulary, defined once: run states and what started a run.

Every module asks these enums (``state.final``, ``state in OPEN_STATES``,
``trigger.scheduled``) instead of spelling tuples of names; a new state or trigger is
added here and its place in each named set decided here, nowhere else.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    SKIPPED = "skipped"
    LOST = "lost"

    @property
    def open(self) -> bool:
        """Not ended yet: someone still owes this run a final event."""
        return self in OPEN_STATES

    @property
    def final(self) -> bool:
        return self not in OPEN_STATES

    @property
    def failed(self) -> bool:
        """Ended badly: counts as a failure for chains (``on = "failed"``) and notifications."""
        return self in FAILED_STATES

    @property
    def completed(self) -> bool:
        """Ran to an end, well or badly (``skipped`` never ran, so it completes nothing)."""
        return self in COMPLETED_STATES

    @property
    def retryable(self) -> bool:
        """A job's ``retries`` apply to runs ending this way (not killed by an operator, not lost)."""
        return self in RETRYABLE_STATES

    @property
    def outcome(self) -> str:
        """The notification outcome (``notify.on``) a final state stands for; '' for open states."""
        if self is RunState.SUCCEEDED:
            return "success"
        if self is RunState.LOST:
            return "lost"
        return "failure" if self.failed else ""


OPEN_STATES = frozenset({RunState.QUEUED, RunState.STARTED})
FAILED_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT, RunState.KILLED, RunState.LOST})
COMPLETED_STATES = frozenset({RunState.SUCCEEDED}) | FAILED_STATES
RETRYABLE_STATES = frozenset({RunState.FAILED, RunState.TIMED_OUT})
FINAL_STATES = frozenset(RunState) - OPEN_STATES


class RunTrigger(StrEnum):
    """What started a run (the event's ``trigger`` field)."""

    CRON = "cron"
    INTERVAL = "interval"
    ONCE = "once"
    FILE = "file"
    MANUAL = "manual"  # natsched run, or a request on natsched.trigger.<group>.<job>
    EVENT = "event"  # a chain: upstream completions
    SUBJECT = "subject"  # a message on an operator's subject
    RETRY = "retry"
    LOST = "lost"  # a load-balance run re-dispatched because its agent was lost
    UNKNOWN = "unknown"  # a run known only from a heartbeat's list, closed as lost

    @property
    def scheduled(self) -> bool:
        """Fired by a time trigger: the leader's work, fenced by its lease term, with a slot."""
        return self in SCHEDULED_TRIGGERS

    @property
    def held(self) -> bool:
        """Held back by calendars and pauses; an operator's explicit run goes ahead regardless."""
        return self is not RunTrigger.MANUAL


NO_AGENT = "none"  # the agent of a run the master records itself (it reached no agent): reserved

SCHEDULED_TRIGGERS = frozenset({RunTrigger.CRON, RunTrigger.INTERVAL, RunTrigger.ONCE})


def run_trigger(text: str) -> RunTrigger:
    """The trigger named in an event or request; ``unknown`` for a name this version lacks."""
    try:
        return RunTrigger(text)
    except ValueError:
        return RunTrigger.UNKNOWN
