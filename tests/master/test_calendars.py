"""Calendars and pauses: runs held back on holidays, in maintenance mode, queued until resume."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client

from natsched.calendars import CalendarRule, Holds, parse_calendar
from natsched.master.service import MasterService
from natsched.settings import ConnectionSettings
from natsched.subjects import API_CALENDARS_DELETE, API_CALENDARS_SET, API_PAUSE, API_RESUME
from natsched.vocab import RunTrigger
from tests.conftest import AgentFactory, eventually
from tests.helpers import api, apply, job, stream_events, toml_jobs

HOLIDAYS = {"name": "holidays", "timezone": "Europe/Berlin", "dates": ["2026-12-25"], "weekdays": []}


async def runs_of(nc: Client, key: str, state: str) -> list[dict[str, Any]]:
    return [e for e in await stream_events(nc) if e["job"] == key and e["state"] == state]


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_calendar_days_weekdays_and_windows_in_the_calendar_time_zone() -> None:
    cal = parse_calendar(
        {
            **HOLIDAYS,
            "weekdays": ["sun"],
            "windows": [{"start": "2026-06-01T22:00:00Z", "end": "2026-06-02T02:00:00Z"}],
        }
    )
    assert cal.contains(at("2026-12-24T23:30:00+00:00")), "already the 25th in Berlin"
    assert not cal.contains(at("2026-12-24T22:30:00+00:00"))
    assert cal.contains(at("2026-11-29T12:00:00+00:00")), "a Sunday"
    assert cal.contains(at("2026-06-01T23:00:00+00:00")) and not cal.contains(at("2026-06-02T02:00:00+00:00"))
    holds = Holds(calendars={"holidays": cal})
    rule = CalendarRule(skip=("holidays",))
    assert holds.job_hold(rule, "g.j", RunTrigger.CRON, at("2026-12-25T10:00:00+01:00")) == (
        "skip",
        "calendar: holidays day",
    )
    assert holds.job_hold(rule, "g.j", RunTrigger.MANUAL, at("2026-12-25T10:00:00+01:00")) == ("", ""), (
        "manual runs go ahead"
    )
    assert holds.job_hold(CalendarRule(only=("missing",)), "g.j", RunTrigger.CRON, 0)[0] == "skip", (
        "unknown calendar holds back"
    )


async def test_a_scheduled_job_skips_a_holiday_with_an_injected_clock(
    conn: ConnectionSettings, nc: Client, start_agent: AgentFactory
) -> None:
    # The master believes it is 2026-12-24 23:59:57 in Berlin: three seconds of Christmas Eve, then Christmas.
    offset = datetime(2026, 12, 24, 22, 59, 57, tzinfo=UTC).timestamp() - time.time()
    async with MasterService(conn, clock=lambda: time.time() + offset):
        await start_agent("a1")
        assert (await api(nc, API_CALENDARS_SET, {"calendar": HOLIDAYS}))["ok"]
        every_second = [{"every": "1s"}]
        reply = await apply(
            nc,
            toml_jobs(
                job("workday", mode="slave", triggers=every_second, calendar={"skip": ["holidays"]}),
                job("holiday", mode="slave", triggers=every_second, calendar={"only": ["holidays"]}),
                group="cal",
            ),
        )
        assert reply["ok"], reply

        async def christmas_came() -> bool:
            return len(await runs_of(nc, "cal.holiday", "succeeded")) >= 2

        await eventually(christmas_came, 15, "holiday-only job ran on the 25th")
        christmas = datetime(2026, 12, 24, 23, 0, 0, tzinfo=UTC).timestamp()
        ran = await runs_of(nc, "cal.workday", "started")
        skipped = await runs_of(nc, "cal.workday", "skipped")
        assert ran and all(e["scheduled_at"] < christmas for e in ran), "runs on the 24th only"
        assert skipped and all(e["scheduled_at"] >= christmas for e in skipped)
        assert skipped[0]["reason"] == "calendar: holidays day" and skipped[0]["agent"] == "none"
        assert all(e["scheduled_at"] >= christmas for e in await runs_of(nc, "cal.holiday", "started"))
        reply = await api(nc, API_CALENDARS_DELETE, {"name": "holidays"})
        assert reply["ok"] is False and "used by cal.holiday, cal.workday" in reply["error"]


async def test_apply_refuses_an_unknown_calendar(master: MasterService, nc: Client) -> None:
    reply = await apply(nc, toml_jobs(job("x", mode="slave", calendar={"skip": ["nope"]}), group="cal"))
    assert reply["ok"] is False and "calendar 'nope' does not exist" in " ".join(
        [reply["error"], *reply.get("errors", [])]
    )


async def test_pause_skips_or_queues_and_manual_runs_go_ahead(
    master: MasterService, nc: Client, start_agent: AgentFactory
) -> None:
    await start_agent("p1")
    await start_agent("p2", pools=frozenset({"pp"}))
    await start_agent("p3", pools=frozenset({"pp"}), priority=200)
    await apply(
        nc,
        toml_jobs(
            job("tick", mode="slave", targets={"agents": ["p1"]}, triggers=[{"every": "1s"}]),
            job("pooled", mode="load-balance", targets={"pools": ["pp"]}),
            group="pz",
        ),
    )
    assert (await api(nc, API_PAUSE, {"job": "pz.tick", "note": "disk swap"}))["ok"]
    await eventually(lambda: _has(nc, "pz.tick", "skipped"), 10, "a paused slot recorded skipped")
    [first, *_] = await runs_of(nc, "pz.tick", "skipped")
    assert first["reason"] == "job paused: disk swap"
    manual = await nc.request("natsched.trigger.pz.tick", b"{}", timeout=10)
    assert b'"ok": true' in manual.data or b'"ok":true' in manual.data, manual.data

    assert (await api(nc, API_PAUSE, {"job": "pz.tick", "mode": "queue"}))["ok"]
    await asyncio.sleep(2.5)  # slots fall due while paused: held, not run
    before = len(await runs_of(nc, "pz.tick", "started"))
    assert (await api(nc, API_RESUME, {"job": "pz.tick"}))["ok"]

    async def queued_ones_ran() -> bool:
        return len(await runs_of(nc, "pz.tick", "started")) >= before + 2

    await eventually(queued_ones_ran, 10, "queued runs started on resume")

    # An agent in maintenance: a load-balance run goes to another agent of the pool.
    assert (await api(nc, API_PAUSE, {"agent": "p2"}))["ok"]
    await asyncio.sleep(0.5)  # the agent sees the pause through its settings watch
    reply = await nc.request("natsched.trigger.pz.pooled", b"{}", timeout=10)
    assert b'"agent": "p3"' in reply.data or b'"agent":"p3"' in reply.data, reply.data


async def _has(nc: Client, key: str, state: str) -> bool:
    return bool(await runs_of(nc, key, state))
