"""The admin API the master serves on ``natsched.api.>``: JSON in, JSON out.

Every reply is ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line",
"errors": [...]}``; a handler never lets an exception escape, so garbage on any API
subject gets an error reply and the master stays up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import __version__, codec, subjects
from natsched.chaingraph import check_chain_change
from natsched.errors import ApiError, JobFileError, NatschedError, SpecError
from natsched.jobfile import parse_job_document
from natsched.jobspec import job_to_dict, parse_job
from natsched.master.apply import (
    JobsAfter,
    check_no_past_once,
    execute_plan,
    plan_apply,
    raise_conflicts,
)
from natsched.master.groups_api import GroupSettingsApi
from natsched.master.handling import SideBySide
from natsched.master.jobindex import JobIndex
from natsched.master.requests import check_request
from natsched.master.secrets_api import SecretsApi
from natsched.master.settings_api import SettingsApi, calendar_names, check_calendars_exist
from natsched.master.subjectstream import check_subjects_free, other_streams
from natsched.models import AgentIdentity, Heartbeat, JobSpec
from natsched.runs import get_run
from natsched.triggers.subject import SubjectTrigger

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
LIST_LIMIT = 5000
# Requests that change nothing the others plan from (reads, and a cancel, which waits up to
# 10 s on an agent) are answered beside the others; every other one takes its turn, in order.
BESIDE = frozenset(
    {subjects.API_PING, subjects.API_JOBS_LIST, subjects.API_JOBS_GET, subjects.API_RUNS_CANCEL}
)


def _as_str(body: dict[str, Any], name: str, default: str | None = None) -> str:
    value = body.get(name, default)
    if not isinstance(value, str) or not value:
        raise ApiError(f"request field {name!r} must be a non-empty string")
    return value


def _as_keys(body: dict[str, Any]) -> list[str]:
    keys = body.get("jobs")
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ApiError("request field 'jobs' must be a non-empty list of job names")
    return keys


class AdminApi:
    """Handlers for every ``natsched.api.*`` subject, bound to one master."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        jobs: KeyValue,
        agents: KeyValue,
        master_id: str,
        nc: Client | None = None,
        index: JobIndex,
        settings: KeyValue | None = None,
        secrets: SecretsApi | None = None,
        vouch: Callable[[Heartbeat], Awaitable[Heartbeat]] | None = None,
    ) -> None:
        self._index = index
        # A heartbeat's pools and tags as the masters count them (members.py: proven only).
        self._vouch = vouch
        self._nc = nc
        self._js = js
        self._jobs = jobs
        self._agents = agents
        self._master_id = master_id
        self._turn = asyncio.Lock()
        # Each request in its own task, so a cancel waiting on an unresponsive agent no longer
        # holds every request of this master for 10 s.
        self._side_by_side = SideBySide(self._serve, 64)
        self.serve = self._side_by_side.take
        self.handlers: dict[str, Handler] = {
            subjects.API_PING: self.ping,
            subjects.API_APPLY: self.apply,
            subjects.API_JOBS_LIST: self.list_jobs,
            subjects.API_JOBS_GET: self.get_job,
            subjects.API_JOBS_DELETE: self.delete_jobs,
            subjects.API_JOBS_ENABLE: self.enable_jobs,
            subjects.API_JOBS_DISABLE: self.disable_jobs,
            subjects.API_RUNS_CANCEL: self.cancel_run,
        }
        self.settings_api: SettingsApi | None = None
        if settings is not None:
            self.settings_api = SettingsApi(js, settings, index)
            self.handlers.update(self.settings_api.handlers())
            self.handlers.update(GroupSettingsApi(js, settings).handlers())
        if secrets is not None:
            self.handlers.update(secrets.handlers())

    async def _serve(self, msg: Msg) -> None:
        if msg.subject in BESIDE:
            await self.handle(msg)
        else:
            async with self._turn:  # FIFO: changes keep the order they came in
                await self.handle(msg)

    async def close(self) -> None:
        await self._side_by_side.close()

    async def handle(self, msg: Msg) -> None:
        """Answer one request; every failure becomes an error reply, never a crash."""
        reply = await self._answer(msg)
        if msg.reply:
            data = codec.to_json(reply)
            limit = self._nc.max_payload if self._nc is not None else len(data)
            if len(data) > limit:  # nats-py would refuse to send it and the caller wait in vain
                data = codec.to_json(
                    {
                        "ok": False,
                        "error": f"the reply is {len(data):,} bytes, over the server's max_payload "
                        f"({limit:,}); ask for less at once (e.g. jobs list --group)",
                    }
                )
            await msg.respond(data)

    async def _answer(self, msg: Msg) -> dict[str, Any]:
        handler = self.handlers.get(msg.subject)
        if handler is None:
            return {"ok": False, "error": f"unknown API subject {msg.subject!r}"}
        try:
            body = check_request(msg.subject, codec.from_json(msg.data, msg.subject, strict=True))
            return {"ok": True, **await handler(body)}
        except JobFileError as exc:
            return {"ok": False, "error": str(exc).splitlines()[0], "errors": exc.errors}
        except NatschedError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug must not take the API down; log it with its traceback
            log.exception("API %s failed", msg.subject)
            return {"ok": False, "error": f"internal error: {type(exc).__name__}: {exc}"}

    async def ping(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"master": self._master_id, "version": __version__}

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        source = _as_str(body, "source", "request")
        content = _as_str(body, "content")
        fmt = body.get("format")
        if fmt not in (None, "toml", "json"):
            raise ApiError("request field 'format' must be 'toml' or 'json'")
        job_file = parse_job_document(content, source=source, fmt=fmt)
        await self._index.sync()  # plan over everything acknowledged, also through another master
        current = self._index.in_groups(job_file.groups)
        plan = plan_apply(job_file, current, prune=body.get("prune", False))
        after = JobsAfter(self._index.jobs, plan)
        try:
            check_no_past_once(plan, current, datetime.now(UTC))
            check_chain_change(after, after.changed, after.removed, self._index.dependents)
            if any(spec.calendar is not None for spec in after.changed.values()):
                check_calendars_exist(after.changed, await calendar_names(self._js))
            if any(isinstance(t, SubjectTrigger) for spec in after.changed.values() for t in spec.triggers):
                check_subjects_free(after.changed, await other_streams(self._js))
        except SpecError as exc:
            raise exc.located(source=source) from None
        dry_run: bool = body.get("dry_run", False)
        if not dry_run:
            raise_conflicts(await execute_plan(self._jobs, plan))
            await self._index_synced()
            log.info("applied %s: %s", source, {k: len(v) for k, v in plan.summary().items()})
        return {"dry_run": dry_run, **plan.summary()}

    async def _index_synced(self) -> None:
        """Reply only once this master's job index has the change, so a request sent right
        after the reply (served by this master) sees the new definition."""
        try:
            await self._index.sync()
        except NatschedError as exc:
            log.warning("%s; replying anyway", exc)

    async def _resolve(self, name: str) -> str:
        """A full key from ``<group>.<job>`` or a bare job name that is unique across groups."""
        return self._index.resolve(name)

    async def _agent_identity(self, name: str) -> tuple[AgentIdentity, bool]:
        if not subjects.is_token(name):  # checked before it becomes part of a KV read's subject
            raise ApiError(f"bad agent name {subjects.shown(name)}: must be {subjects.TOKEN_RULE}")
        try:
            entry = await self._agents.get(name)
            if entry.value:
                hb = codec.decode_heartbeat(entry.value, name)
                if self._vouch is not None:
                    hb = await self._vouch(hb)
                return AgentIdentity(
                    name=hb.agent,
                    tags=frozenset(hb.tags),
                    pools=frozenset(hb.pools),
                    groups=frozenset(hb.groups),
                ), True
        except Exception:  # noqa: BLE001 - no live heartbeat: match by name only
            log.debug("no heartbeat for agent %s", name)
        try:
            return AgentIdentity(name=name), False
        except SpecError as exc:
            raise ApiError(f"bad agent name: {exc}") from None

    async def list_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        group = body.get("group")
        agent_name = body.get("agent")
        identity, agent_known = (await self._agent_identity(agent_name)) if agent_name else (None, True)
        await self._index.sync()
        entries = self._index.entries
        keys = self._index.group_keys(group) if group else entries
        rows: list[dict[str, Any]] = []
        invalid: list[str] = []
        for key in sorted(keys):
            stored = entries[key]
            if stored.spec is None:
                invalid.append(f"{key}: {stored.error}")
                continue
            if identity is not None and not identity.takes(stored.spec.group, stored.spec.targets):
                continue
            rows.append(_summary(stored.spec, stored.revision))
        return {
            "jobs": rows[:LIST_LIMIT],
            "truncated": len(rows) > LIST_LIMIT,
            "invalid": invalid,
            "agent_known": agent_known,
        }

    async def get_job(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._index.sync()
        key = await self._resolve(_as_str(body, "job"))
        spec = self._index.spec(key)
        return {"key": key, "revision": self._index.entries[key].revision, "spec": job_to_dict(spec)}

    async def delete_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        await self._index.sync()
        keys = [await self._resolve(name) for name in _as_keys(body)]
        for key in keys:
            dependents = sorted(self._index.dependents(key) - set(keys))
            if dependents:
                raise ApiError(
                    f"job {key} is upstream of {', '.join(dependents)} (triggers.after); "
                    "change or delete those first, or delete them together"
                )
        for key in keys:
            await self._jobs.delete(key)
        await self._index_synced()
        log.info("deleted jobs %s", keys)
        return {"deleted": keys}

    async def _set_enabled(self, body: dict[str, Any], enabled: bool) -> dict[str, Any]:
        await self._index.sync()
        keys = [await self._resolve(name) for name in _as_keys(body)]
        changed: list[str] = []
        for key in keys:
            spec = self._index.spec(key)
            if spec.enabled == enabled:
                continue
            data = job_to_dict(spec)
            data["enabled"] = enabled
            revision = self._index.entries[key].revision
            try:
                await self._jobs.update(key, codec.encode_job(parse_job(data)), last=revision)
            except KeyWrongLastSequenceError:
                raise ApiError(f"job {key} changed while updating it; try again") from None
            changed.append(key)
        await self._index_synced()
        return {"changed": changed, "unchanged": [k for k in keys if k not in changed]}

    async def enable_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_enabled(body, True)

    async def disable_jobs(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._set_enabled(body, False)

    async def cancel_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Stop a running process on whichever agent runs it."""
        run_id = _as_str(body, "run_id")
        summary = await get_run(self._js, run_id)
        if summary.latest.state.final:
            raise ApiError(f"run {run_id} already ended: {summary.latest.state.value}")
        assert self._nc is not None
        try:
            msg = await self._nc.request(
                subjects.agent_cancel_subject(summary.latest.agent),
                codec.pack({"run_id": run_id}),
                timeout=10,
            )
        except (NoRespondersError, NatsTimeoutError):
            raise ApiError(
                f"agent {summary.latest.agent} is offline; run {run_id} cannot be cancelled now"
            ) from None
        reply = codec.unpack(msg.data, "cancel reply")
        if not reply.get("ok"):
            raise ApiError(str(reply.get("reason", "the agent refused")))
        return {"run_id": run_id, "agent": summary.latest.agent, "cancelled": True}


def _summary(spec: JobSpec, revision: int) -> dict[str, Any]:
    data = job_to_dict(spec)
    return {
        "key": spec.key,
        "group": spec.group,
        "name": spec.name,
        "mode": spec.mode.value,
        "enabled": spec.enabled,
        "targets": data["targets"],
        "triggers": data.get("triggers", []),
        "command": data["command"],
        "revision": revision,
    }
