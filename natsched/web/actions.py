"""An admin's actions from the browser, each through the API every client uses.

Run now goes through ``natsched.trigger.<job>`` (as ``natsched run`` does); cancel, pause,
resume, enable and disable through ``natsched.api.*``. The master checks every request
(``master/requests.py``) and its one-line error is what the page shows; here only what
becomes part of a subject is checked first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client

from natsched import subjects
from natsched.client import request_trigger
from natsched.errors import ApiError
from natsched.web.reads import api_call

Action = Callable[[Client, dict[str, Any]], Awaitable[dict[str, Any]]]


def _job(body: dict[str, Any]) -> str:
    job = body.get("job")
    if not subjects.is_job_ref(job):
        raise ApiError(f"'job' must be a job name, <group>.<job>, not {subjects.shown(job)}")
    return str(job)


def _target(body: dict[str, Any]) -> dict[str, Any]:
    """A pause's target: exactly one of job or agent."""
    return {k: body[k] for k in ("job", "agent") if body.get(k)}


async def run_now(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    job = _job(body)
    reply = await request_trigger(nc, job, {k: body[k] for k in ("args", "env") if body.get(k)})
    if not reply.get("ok"):
        raise ApiError(str(reply.get("error", "the trigger was refused")))
    return {"job": reply.get("job", job), "runs": reply.get("runs", [])}


async def cancel(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await api_call(nc, subjects.API_RUNS_CANCEL, {"run_id": body.get("run_id")})


async def pause(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await api_call(
        nc, subjects.API_PAUSE, {**_target(body), "mode": "skip", "note": "paused from the web"}
    )


async def resume(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await api_call(nc, subjects.API_RESUME, _target(body))


async def enable(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await api_call(nc, subjects.API_JOBS_ENABLE, {"jobs": [_job(body)]})


async def disable(nc: Client, body: dict[str, Any]) -> dict[str, Any]:
    return await api_call(nc, subjects.API_JOBS_DISABLE, {"jobs": [_job(body)]})


ACTIONS: dict[str, Action] = {
    "run": run_now,
    "cancel": cancel,
    "pause": pause,
    "resume": resume,
    "enable": enable,
    "disable": disable,
}


async def perform(nc: Client, name: str, body: dict[str, Any]) -> dict[str, Any]:
    action = ACTIONS.get(name)
    if action is None:
        raise ApiError(f"no action {subjects.shown(name)}; actions: {', '.join(ACTIONS)}")
    return await action(nc, body)
