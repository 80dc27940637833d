"""What each page shows, read from NATS: heartbeats, the events stream, the admin API.

Every function returns plain JSON-ready data. Nothing here writes; nothing that could be
a secret leaves (``redact_spec``): secrets are ``${secret:NAME}`` references anyway, and
env values whose name says password/token/key and webhook paths are masked as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from natsched import codec, subjects
from natsched.calendars import PAUSE_AGENT_PREFIX, PAUSE_JOB_PREFIX
from natsched.chainview import read_chain
from natsched.errors import ApiError, CodecError, NoMasterError, NotFoundError, VersionError
from natsched.events import RunEvent, parse_event
from natsched.jobspec import parse_job
from natsched.kvscan import read_stream, scan
from natsched.runs import RunSummary, add_event, event_filter, list_runs, run_started_at
from natsched.triggers.fire import next_job_fire
from natsched.vocab import RunState

API_TIMEOUT = 10.0
MASTERS_WAIT = 0.25  # every master answers natsched.masters.status at once; wait this long for them
RECENT = 3600.0
RECENT_LIMIT = 100_000  # runs of the last hour counted on the overview
PAGE_MAX = 500
TIMELINE_MAX = 5000  # runs drawn at once; the page asks for a shorter window past this
NEXT_FIRES = 5
MASK = "***"
_SENSITIVE = re.compile(r"pass|secret|token|key|credential|auth|cookie", re.IGNORECASE)


def event_json(event: RunEvent) -> dict[str, Any]:
    data = asdict(event)
    data["state"] = event.state.value
    data["trigger"] = event.trigger.value
    data["duration"] = event.duration
    return data


def summary_json(summary: RunSummary) -> dict[str, Any]:
    return {**event_json(summary.latest), "states": summary.states}


async def api_call(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One admin API request on the web's own connection; the master's one-line error as ApiError."""
    try:
        msg = await nc.request(subject, codec.to_json(body or {}), timeout=API_TIMEOUT)
    except NoRespondersError:
        raise NoMasterError(f"no master answers on {subject}") from None
    except NatsTimeoutError:
        raise NoMasterError(f"no master answered {subject} within {API_TIMEOUT:g}s") from None
    reply = codec.from_json(msg.data, f"reply to {subject}")
    if not reply.get("ok"):
        raise ApiError(str(reply.get("error", "the master answered without a reason")))
    return reply


async def masters(nc: Client) -> list[dict[str, Any]]:
    """Every master's answer to ``natsched.masters.status`` within ``MASTERS_WAIT``."""
    answers: list[dict[str, Any]] = []

    async def on_answer(msg: Msg) -> None:
        with contextlib.suppress(ValueError):  # not a master's answer
            answer = json.loads(msg.data)
            if isinstance(answer, dict):
                answers.append(answer)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(subjects.MASTERS_STATUS, b"{}", reply=inbox)
        await asyncio.sleep(MASTERS_WAIT)
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda m: (not m.get("leader"), str(m.get("master"))))


async def pauses(nc: Client) -> dict[str, dict[str, Any]]:
    """Paused jobs and agents (``job:<key>`` / ``agent:<name>`` -> pause); {} without a master."""
    try:
        reply = await api_call(nc, subjects.API_CALENDARS_LIST)
    except NoMasterError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for key, pause in reply.get("pauses", {}).items():
        if key.startswith(PAUSE_JOB_PREFIX):
            found[f"job:{key[len(PAUSE_JOB_PREFIX) :]}"] = pause
        elif key.startswith(PAUSE_AGENT_PREFIX):
            found[f"agent:{key[len(PAUSE_AGENT_PREFIX) :]}"] = pause
    return found


async def agents(nc: Client, paused: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    now = time.time()
    rows: list[dict[str, Any]] = []
    for key, entry in sorted((await scan(nc.jetstream(), subjects.AGENTS_BUCKET)).items()):
        try:
            hb = codec.decode_heartbeat(entry.value, key)
        except VersionError as exc:
            rows.append({"agent": key, "incompatible": str(exc)})
            continue
        except CodecError:
            continue  # garbage in the bucket is not an agent
        row = {k: v for k, v in asdict(hb).items() if k != "runs"}
        row.update(seen_ago=max(0.0, now - hb.sent_at), running_runs=len(hb.runs))
        row["paused"] = paused.get(f"agent:{hb.agent}")
        rows.append(row)
    return rows


async def overview(nc: Client) -> dict[str, Any]:
    paused = await pauses(nc)
    found_masters = await masters(nc)
    found_agents = await agents(nc, paused)
    unproven: dict[str, set[str]] = {}  # what the masters do not count (members.py): shown as such
    for answer in found_masters:
        found = answer.get("unproven")
        for agent, names in (found if isinstance(found, dict) else {}).items():
            unproven.setdefault(str(agent), set()).update(map(str, names if isinstance(names, list) else []))
    for row in found_agents:
        row["unproven"] = sorted(unproven.get(str(row["agent"]), ()))
    recent = await list_runs(nc.jetstream(), since=time.time() - RECENT, limit=RECENT_LIMIT)
    counts = {state.value: 0 for state in RunState}
    for run in recent:
        counts[run.latest.state.value] += 1
    return {
        "masters": found_masters,
        "agents": found_agents,
        "counts": counts,
        "running": [summary_json(r) for r in recent if r.latest.state.open][:50],
        "failures": [summary_json(r) for r in recent if r.latest.state.failed][:50],
        "now": time.time(),
    }


def redact_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A job definition fit for a browser: sensitive env values and webhook paths masked."""
    out = dict(spec)
    if isinstance(out.get("env"), dict):
        out["env"] = {
            name: (MASK if _SENSITIVE.search(name) and "${secret:" not in str(value) else value)
            for name, value in out["env"].items()
        }
    if isinstance(out.get("notify"), list):
        out["notify"] = [_redact_notify(n) for n in out["notify"]]
    return out


def _redact_notify(target: dict[str, Any]) -> dict[str, Any]:
    if "webhook" not in target:
        return target
    url = urlsplit(str(target["webhook"]))  # a webhook's path and query are often its credential
    return {**target, "webhook": f"{url.scheme}://{url.hostname or ''}/{MASK}"}


async def jobs(nc: Client, *, group: str | None, agent: str | None, mode: str | None) -> dict[str, Any]:
    body = {k: v for k, v in (("group", group), ("agent", agent)) if v}
    reply = await api_call(nc, subjects.API_JOBS_LIST, body)
    paused = await pauses(nc)
    rows = [
        {**row, "paused": paused.get(f"job:{row['key']}")}
        for row in reply["jobs"]
        if mode is None or row["mode"] == mode
    ]
    return {"jobs": rows, "truncated": reply.get("truncated", False), "invalid": reply.get("invalid", [])}


async def job(nc: Client, name: str) -> dict[str, Any]:
    reply = await api_call(nc, subjects.API_JOBS_GET, {"job": name})
    spec = parse_job(reply["spec"])
    fires: list[float] = []
    after = time.time()
    for _ in range(NEXT_FIRES):
        upcoming = next_job_fire(spec, after)
        if upcoming is None:
            break
        fires.append(upcoming[0])
        after = upcoming[0]
    runs = await list_runs(nc.jetstream(), job=reply["key"], limit=20)
    paused = await pauses(nc)
    return {
        "key": reply["key"],
        "revision": reply["revision"],
        "spec": redact_spec(reply["spec"]),
        "next_fires": fires,
        "runs": [summary_json(r) for r in runs],
        "paused": paused.get(f"job:{reply['key']}"),
        "allows": {"args": spec.trigger.args, "env": list(spec.trigger.env)},
    }


async def runs_page(
    nc: Client,
    *,
    job: str | None,
    agent: str | None,
    state: str | None,
    since: float,
    offset: int,
    limit: int,
) -> dict[str, Any]:
    """One page of the runs since ``since``, newest first, and how many there are in all."""
    limit = max(1, min(limit, PAGE_MAX))
    found = await list_runs(nc.jetstream(), job=job, agent=agent, state=state, since=since, limit=10**9)
    page = found[offset : offset + limit]
    return {"runs": [summary_json(r) for r in page], "total": len(found), "offset": offset, "limit": limit}


async def run_detail(nc: Client, run_id: str) -> dict[str, Any]:
    """A run with every event it went through (state, time, agent, reason)."""
    since = run_started_at(run_id) - 2.0
    runs: dict[str, RunSummary] = {}
    history: list[dict[str, Any]] = []
    js = nc.jetstream()
    async for msg in read_stream(js, subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS, since=since):
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            continue
        if event.run_id != run_id:
            continue
        add_event(runs, event)
        if event.agent == runs[run_id].latest.agent:  # another agent cannot speak for this run
            history.append({"state": event.state.value, "at": event.at, "reason": event.reason})
    if run_id not in runs:
        raise NotFoundError(f"no run {run_id} in {subjects.EVENTS_STREAM}")
    latest = runs[run_id].latest
    chain = latest.detail.get("chain_id") or latest.detail.get("batch") or ""
    return {"run": summary_json(runs[run_id]), "history": history, "chain_id": chain}


async def chain(nc: Client, chain_id: str) -> dict[str, Any]:
    """A chain run as a graph: one node per run, edges from ``detail.parents``, fan-ins waiting."""
    view = await read_chain(nc.jetstream(), chain_id)
    nodes = [summary_json(r) for r in view.runs.values()]
    edges = [{"from": p, "to": run_id} for run_id in view.runs for p in view.parents(run_id)]
    waiting: list[dict[str, Any]] = []
    for key in view.waiting:
        upstream: list[str] = []
        with contextlib.suppress(ApiError, NoMasterError, NotFoundError):
            spec = (await api_call(nc, subjects.API_JOBS_GET, {"job": key}))["spec"]
            for trigger in spec.get("triggers", []):
                upstream += trigger.get("after", [])
        parents = [run_id for run_id, r in view.runs.items() if r.latest.job in upstream]
        waiting.append({"job": key, "upstream": upstream, "parents": parents})
    return {"chain_id": chain_id, "state": view.state, "nodes": nodes, "edges": edges, "waiting": waiting}


async def timeline(nc: Client, *, start: float, end: float, agent: str | None) -> dict[str, Any]:
    """Runs that overlap ``[start, end]``, per agent; at most ``TIMELINE_MAX`` of them."""
    now = time.time()
    js = nc.jetstream()
    subject = event_filter(agent=agent)
    runs: dict[str, RunSummary] = {}
    # A run is in the window if it ended after its start: its events are after ``start``.
    async for msg in read_stream(js, subjects.EVENTS_STREAM, subject, since=start):
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            continue
        if (event.started_at or event.at) <= end:
            add_event(runs, event)
    items = []
    for summary in sorted(runs.values(), key=lambda r: r.latest.run_id):
        e = summary.latest
        begin = e.started_at or e.scheduled_at or e.at
        finish = e.ended_at or (now if e.state.open else e.at)
        items.append({**summary_json(summary), "start": begin, "end": max(finish, begin)})
    truncated = len(items) > TIMELINE_MAX
    return {"items": items[-TIMELINE_MAX:], "truncated": truncated, "start": start, "end": end}
