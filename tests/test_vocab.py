"""The run vocabulary: each state and trigger has one place in each named set."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig
from natsched import codec
from natsched.errors import CodecError, ConfigError
from natsched.events import RunEvent, new_run_id, parse_event
from natsched.models import Heartbeat
from natsched.triggers.registry import KINDS
from natsched.vocab import (
    COMPLETED_STATES,
    FAILED_STATES,
    FINAL_STATES,
    NO_AGENT,
    OPEN_STATES,
    RETRYABLE_STATES,
    SCHEDULED_TRIGGERS,
    RunState,
    RunTrigger,
)


def test_every_state_is_open_or_final_never_both() -> None:
    assert set(RunState) == OPEN_STATES | FINAL_STATES
    assert not OPEN_STATES & FINAL_STATES
    assert {RunState.QUEUED, RunState.STARTED} == OPEN_STATES, "a queued run is as open as a started one"
    for state in RunState:
        assert state.open is (state in OPEN_STATES) and state.final is (state in FINAL_STATES)


def test_named_sets_nest() -> None:
    assert RETRYABLE_STATES < FAILED_STATES < COMPLETED_STATES < FINAL_STATES
    assert {RunState.SUCCEEDED} == COMPLETED_STATES - FAILED_STATES
    assert RunState.SKIPPED not in COMPLETED_STATES, "a skipped run never ran: it completes nothing"
    assert RunState.KILLED.failed and not RunState.KILLED.retryable, "an operator's kill is not retried"
    assert RunState.LOST.failed and not RunState.LOST.retryable, "lost runs are re-dispatched, not retried"


def test_each_final_state_has_one_notification_outcome() -> None:
    outcomes = {state: state.outcome for state in COMPLETED_STATES}
    assert outcomes[RunState.SUCCEEDED] == "success"
    assert outcomes[RunState.LOST] == "lost"
    assert {outcomes[s] for s in FAILED_STATES - {RunState.LOST}} == {"failure"}
    assert all(not state.outcome for state in OPEN_STATES)


def test_every_trigger_kind_names_a_run_trigger_and_time_kinds_are_scheduled() -> None:
    kinds = {kind.kind for kind in KINDS}
    assert kinds <= set(RunTrigger)
    assert kinds >= SCHEDULED_TRIGGERS
    assert all(trigger.held for trigger in RunTrigger if trigger is not RunTrigger.MANUAL)
    assert not RunTrigger.MANUAL.held and not RunTrigger.MANUAL.scheduled


def _event_json(**changes: object) -> bytes:
    event = RunEvent(
        run_id=new_run_id(), job="g.j", agent="a1", state=RunState.STARTED, trigger=RunTrigger.CRON
    )
    data = json.loads(event.to_json())
    data.update(changes)
    return json.dumps(data).encode()


def test_events_carry_their_trigger_and_refuse_a_non_text_one() -> None:
    assert parse_event(_event_json(), None).trigger is RunTrigger.CRON
    assert parse_event(_event_json(trigger="from-a-newer-version"), None).trigger is RunTrigger.UNKNOWN
    with pytest.raises(CodecError):
        parse_event(_event_json(trigger=5), None)


def test_the_name_of_runs_that_reached_no_agent_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        AgentConfig(name=NO_AGENT, state_dir=tmp_path)
    now = time.time()
    beat = Heartbeat(
        agent=NO_AGENT, version="0", protocol=1, sent_at=now, started_at=now,
        load1=0.0, cpu_percent=0.0, memory_percent=0.0, running=0, max_concurrency=1,
    )  # fmt: skip
    heartbeat = codec.encode_heartbeat(beat)
    with pytest.raises(CodecError, match="reserved"):
        codec.decode_heartbeat(heartbeat, NO_AGENT)
