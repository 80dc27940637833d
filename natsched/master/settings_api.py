"""Admin API for calendars and pauses, kept in the settings bucket (``natsched_settings``).

``natsched.api.calendars.set`` {"calendar": {...}}, ``.list`` {}, ``.delete`` {"name"};
``natsched.api.pause`` {"job" | "agent", "mode": "skip" | "queue", "note"} and
``natsched.api.resume`` {"job" | "agent"}. A calendar that jobs use cannot be deleted
(they would be held back), and a job cannot be applied with a calendar that does not exist.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.calendars import CALENDAR_PREFIX, PAUSE_AGENT_PREFIX, PAUSE_JOB_PREFIX, Pause, parse_calendar
from natsched.errors import ApiError, CodecError, NotFoundError, SpecError
from natsched.kvscan import scan
from natsched.master.jobindex import JobIndex
from natsched.models import JobSpec


async def calendar_names(js: JetStreamContext) -> set[str]:
    return {
        k[len(CALENDAR_PREFIX) :] for k in await scan(js, subjects.SETTINGS_BUCKET, f"{CALENDAR_PREFIX}>")
    }


def check_calendars_exist(jobs: Mapping[str, JobSpec], names: set[str]) -> None:
    for key, spec in sorted(jobs.items()):
        if spec.calendar is None:
            continue
        for name in (*spec.calendar.only, *spec.calendar.skip):
            if name not in names:
                raise SpecError(
                    f"calendar {name!r} does not exist; create it with 'natsched calendars set' first",
                    field="calendar",
                    job=key,
                )


class SettingsApi:
    def __init__(self, js: JetStreamContext, settings: KeyValue, index: JobIndex) -> None:
        self._js = js
        self._kv = settings
        self._index = index

    def handlers(self) -> dict[str, Any]:
        return {
            subjects.API_CALENDARS_SET: self.set_calendar,
            subjects.API_CALENDARS_LIST: self.list_calendars,
            subjects.API_CALENDARS_DELETE: self.delete_calendar,
            subjects.API_PAUSE: self.pause,
            subjects.API_RESUME: self.resume,
        }

    async def set_calendar(self, body: dict[str, Any]) -> dict[str, Any]:
        data = body.get("calendar")
        if not isinstance(data, dict):
            raise ApiError("request field 'calendar' must be an object")
        try:
            calendar = parse_calendar(data)
        except SpecError as exc:
            raise ApiError(f"calendar {subjects.shown(data.get('name', '?'))}: {exc}") from None
        await self._kv.put(f"{CALENDAR_PREFIX}{calendar.name}", codec.pack(calendar.to_dict()))
        return {"calendar": calendar.name}

    async def list_calendars(self, body: dict[str, Any]) -> dict[str, Any]:
        found = await scan(self._js, subjects.SETTINGS_BUCKET, f"{CALENDAR_PREFIX}>")
        calendars = []
        for key, stored in sorted(found.items()):
            try:
                calendars.append(codec.unpack(stored.value, key))
            except CodecError:
                continue
        pauses = await scan(self._js, subjects.SETTINGS_BUCKET, subjects.PAUSES)
        return {
            "calendars": calendars,
            "pauses": {k: codec.unpack(v.value, k) for k, v in sorted(pauses.items())},
        }

    async def delete_calendar(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("name")
        if not isinstance(name, str) or not subjects.is_token(name):
            raise ApiError("request field 'name' must be a calendar name")
        await self._index.sync()
        users = _calendar_users(name, self._index.mentioning((b"calendar",)))
        if users:
            raise ApiError(f"calendar {name} is used by {', '.join(users)}; change those jobs first")
        try:
            await self._kv.get(f"{CALENDAR_PREFIX}{name}")
        except KeyNotFoundError:
            raise NotFoundError(f"no calendar {name!r}") from None
        await self._kv.delete(f"{CALENDAR_PREFIX}{name}")
        return {"deleted": name}

    def _pause_key(self, body: dict[str, Any]) -> str:
        job, agent = body.get("job"), body.get("agent")
        if bool(job) == bool(agent):
            raise ApiError("give exactly one of 'job' (<group>.<job>) or 'agent'")
        if job:
            try:
                subjects.split_job_key(str(job))
            except ValueError as exc:
                raise ApiError(str(exc)) from None
            return f"{PAUSE_JOB_PREFIX}{job}"
        if not subjects.is_token(str(agent)):
            raise ApiError(f"{subjects.shown(agent)} is not an agent name ({subjects.TOKEN_RULE})")
        return f"{PAUSE_AGENT_PREFIX}{agent}"

    async def pause(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._pause_key(body)
        if body.get("job"):
            await self._index.sync()
        if body.get("job") and str(body["job"]) not in self._index.entries:
            raise NotFoundError(f"no job {body['job']!r}")
        try:
            pause = Pause(mode=body.get("mode", "skip"), note=str(body.get("note", "")), since=time.time())
        except SpecError as exc:
            raise ApiError(str(exc)) from None
        await self._kv.put(key, codec.pack({"mode": pause.mode, "note": pause.note, "since": pause.since}))
        return {"paused": key.split(".", 2)[2], "mode": pause.mode}

    async def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        key = self._pause_key(body)
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            raise NotFoundError(f"{key.split('.', 2)[2]} is not paused") from None
        await self._kv.delete(key)
        return {"resumed": key.split(".", 2)[2]}


def _calendar_users(name: str, jobs: Mapping[str, JobSpec]) -> list[str]:
    return [
        key
        for key, spec in sorted(jobs.items())
        if spec.calendar is not None and name in (*spec.calendar.only, *spec.calendar.skip)
    ]
