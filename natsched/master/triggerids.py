"""Trigger ids: a caller that sends a trigger again (its reply was lost) starts the job once.

A trigger request whose body names ``trigger_id`` is recorded in ``natsched_chains`` under
``trigger.<group>.<job>.<trigger_id>`` (created with compare-and-set, expiring with that
bucket's entries). The runs' ids derive from the key, so a repeat that finds the record
without its outcome (the first is being dispatched, or its master died in it) dispatches the
same run ids again, which agents answer without running them twice; a repeat that finds the
outcome gets it as the reply. Without a trigger id every request is a new start.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ApiError, CodecError

log = logging.getLogger(__name__)
Runs = list[dict[str, Any]]


def check_trigger_id(value: object) -> str:
    """The body's ``trigger_id``, or ApiError: one token of at most the name limit."""
    if not subjects.is_token(value):
        raise ApiError(f"'trigger_id' must be {subjects.TOKEN_RULE}")
    return str(value)


async def once(
    kv: KeyValue, job_key: str, trigger_id: str, dispatch: Callable[[str], Awaitable[Runs]]
) -> tuple[Runs, bool]:
    """``dispatch(base_id)`` once per trigger id: its runs, and True when this was a repeat."""
    key = subjects.trigger_record_key(job_key, trigger_id)
    at = time.time()
    try:
        revision = await kv.create(key, codec.pack({"at": at}))
        repeat = False
    except KeyWrongLastSequenceError:
        try:
            entry = await kv.get(key)
            record = codec.unpack(entry.value or b"", key)
        except (KeyNotFoundError, CodecError) as exc:  # expired just now, or not ours
            raise ApiError(f"trigger id {trigger_id}: its record cannot be read ({exc})") from None
        runs, first = record.get("runs"), record.get("at")
        if not isinstance(first, int | float) or not (runs is None or _is_runs(runs)):
            raise ApiError(f"trigger id {trigger_id}: its record is not one natsched wrote") from None
        if runs is not None:
            return runs, True
        # Recorded but without its outcome: the first request is being dispatched, or its master
        # died in it. The same run ids again are safe: agents run each id once.
        at, revision, repeat = float(first), entry.revision or 0, True
        log.info(
            "trigger %s of %s seen before, outcome unknown: dispatching its runs again", trigger_id, job_key
        )
    runs = await dispatch(f"{int(at * 1000):x}-{hashlib.sha256(key.encode()).hexdigest()[:12]}")
    with contextlib.suppress(KeyWrongLastSequenceError):
        await kv.update(key, codec.pack({"at": at, "runs": runs}), last=revision)
    return runs, repeat


def _is_runs(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(run, dict) for run in value)
