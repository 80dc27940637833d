"""External triggers: anyone may publish to ``natsched.trigger.<group>.<job>`` to start a job.

The body is optional JSON ``{"args": [...], "env": {...}, "correlation_id": "...", "trigger_id":
"..."}`` (a trigger id makes a repeated request start nothing new: ``triggerids.py``); args
and env only as far as the job's ``trigger`` policy allows (see triggerpolicy.py). As a
request, the reply is JSON with the run ids; as a plain publish the job still starts.
An unknown job or a bad body gets an error reply and runs nothing. Served by every
master in one queue group, so each trigger is handled once.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ApiError, CodecError, NatschedError
from natsched.master.dispatch import Dispatcher
from natsched.master.handling import SideBySide
from natsched.master.jobindex import JobIndex
from natsched.master.triggerids import check_trigger_id, once
from natsched.quietlog import Throttled
from natsched.runmessages import MAX_RUN_NAME, MAX_RUN_TEXT, RunReply, is_run_text
from natsched.vocab import RunTrigger

log = logging.getLogger(__name__)
quiet = Throttled(log)  # anyone may publish triggers: a flood of bad ones is not a line each
MAX_ARGS = 256


def parse_trigger_body(body: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, str], str]:
    """(args, env, correlation id) from a trigger's JSON body; ApiError naming what is wrong."""
    unknown = sorted(set(body) - {"args", "env", "correlation_id", "trigger_id"})
    if unknown:
        raise ApiError(
            f"unknown field(s) {', '.join(unknown)}; allowed: args, env, correlation_id, trigger_id"
        )
    args = body.get("args", [])
    if not isinstance(args, list) or len(args) > MAX_ARGS or not all(is_run_text(a) for a in args):
        raise ApiError(
            f"'args' must be a list of at most {MAX_ARGS} strings of at most {MAX_RUN_TEXT} characters"
        )
    env = body.get("env", {})
    if not isinstance(env, dict) or not all(
        is_run_text(k, MAX_RUN_NAME) and is_run_text(v) and k and "=" not in k for k, v in env.items()
    ):
        raise ApiError(
            f"'env' must be an object of NAME: \"value\" strings (names at most {MAX_RUN_NAME}, "
            f"values at most {MAX_RUN_TEXT} characters)"
        )
    correlation = body.get("correlation_id", "")
    if not isinstance(correlation, str) or len(correlation) > 200:
        raise ApiError("'correlation_id' must be a string of at most 200 characters")
    return tuple(args), dict(env), correlation


class TriggerHandler:
    """Handles each trigger in its own task (bounded), so a slow agent delays no other trigger."""

    def __init__(
        self,
        nc: Client,
        index: JobIndex,
        dispatcher: Dispatcher,
        *,
        replies: Client | None = None,
        concurrency: int = 256,
    ) -> None:
        self._nc = nc
        # The connection the triggers arrive on: nats-server lets it answer them
        # (allow_responses), while a master's login may publish to no role's inbox otherwise.
        self._replies = replies or nc
        self._index = index
        self._dispatcher = dispatcher
        self._kv: KeyValue | None = None  # trigger ids' records, opened on first use
        self._side_by_side = SideBySide(self._handle, concurrency)
        self.handle = self._side_by_side.take

    async def _handle(self, msg: Msg) -> None:
        reply = await self._answer(msg)
        if msg.reply:
            await self._replies.publish(msg.reply, codec.to_json(reply))

    async def close(self) -> None:
        await self._side_by_side.close()

    async def _answer(self, msg: Msg) -> dict[str, Any]:
        try:
            name = subjects.job_from_trigger_subject(msg.subject)
            body = codec.from_json(msg.data, f"trigger {subjects.shown(name)}", strict=True)
            args, env, correlation = parse_trigger_body(body)
            spec = await self._index.find(name)  # from memory; a miss first catches up with the bucket
            if not spec.enabled:
                raise ApiError(
                    f"job {spec.key} is disabled; enable it with 'natsched jobs enable {spec.key}'"
                )
            # The job says what a caller may change; the agent checks again.
            spec.trigger.check(spec.key, RunTrigger.MANUAL, args, env)

            async def dispatch(base_id: str | None) -> list[dict[str, Any]]:
                replies = await self._dispatcher.dispatch(
                    spec,
                    trigger=RunTrigger.MANUAL,
                    args=args,
                    env=env,
                    correlation_id=correlation,
                    base_id=base_id,
                )
                return [_run(r) for r in replies]

            repeat = False
            if "trigger_id" in body:
                trigger_id = check_trigger_id(body["trigger_id"])
                runs, repeat = await once(await self._records(), spec.key, trigger_id, dispatch)
            else:
                runs = await dispatch(None)
        except (NatschedError, CodecError) as exc:
            quiet.log(logging.INFO, "refused", "trigger %s refused: %s", subjects.shown(msg.subject), exc)
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the trigger subject down
            log.exception("trigger %s failed", msg.subject)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}
        ok = any(r.get("ok") for r in runs)
        return {
            "ok": ok,
            "job": spec.key,
            "runs": runs,
            **({"repeat": True} if repeat else {}),
            **({} if ok else {"error": "; ".join(str(r.get("reason", "")) for r in runs)}),
        }

    async def _records(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._nc.jetstream().key_value(subjects.CHAINS_BUCKET)
        return self._kv


def _run(reply: RunReply) -> dict[str, Any]:
    return {
        "run_id": reply.run_id,
        "agent": reply.agent,
        "ok": reply.ok,
        "state": reply.state or ("started" if reply.ok else "failed"),
        "pid": reply.pid,
        "reason": reply.reason,
    }
