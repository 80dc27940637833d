"""The master's pure schedule: tick(now), next_due, and misfire after master downtime. No sleeping."""

from __future__ import annotations

from natsched.jobspec import parse_job
from natsched.master.scheduler import Schedule, master_scheduled
from natsched.models import JobSpec

T0 = 1_800_000_000.0  # a whole minute


def spec(misfire: str = "skip", every: str = "10s", mode: str = "slave", **extra: object) -> JobSpec:
    return parse_job(
        {
            "name": "j",
            "group": "g",
            "command": ["true"],
            "mode": mode,
            "misfire": misfire,
            "misfire_cap": 3,
            "targets": {"agents": ["*"]},
            "triggers": [{"every": every}],
            **extra,
        }
    )


def test_tick_fires_each_slot_once_on_the_grid() -> None:
    schedule = Schedule(master_scheduled)
    assert schedule.set_job("g.j", spec(), T0 + 1) == []
    assert schedule.next_due() == T0 + 10
    assert schedule.tick(T0 + 9.99) == []
    fired = schedule.tick(T0 + 10.002)
    assert [(d.slot, d.trigger) for d in fired] == [(T0 + 10, "interval")]
    assert schedule.tick(T0 + 10.5) == []  # not twice
    assert schedule.next_due() == T0 + 20
    # Late by 25 s (a stalled loop): each slot once, in order, and no drift afterwards.
    assert [d.slot for d in schedule.tick(T0 + 45)] == [T0 + 20, T0 + 30, T0 + 40]
    assert schedule.next_due() == T0 + 50


def test_misfire_after_master_downtime_follows_the_job_policy() -> None:
    last_fired = T0 + 10  # the cursor in natsched_state when the master went down
    now = T0 + 75  # back 65 s later: slots 20..70 were missed (70 is 5 s old: late, not on time)
    expected = {"skip": [], "run-once": [T0 + 70], "run-all": [T0 + 50, T0 + 60, T0 + 70]}
    for policy, slots in expected.items():
        schedule = Schedule(master_scheduled)
        schedule.cursors["g.j"] = last_fired
        catch_up = schedule.set_job("g.j", spec(policy), now)
        assert [d.slot for d in catch_up] == slots, policy
        assert schedule.next_due() == T0 + 80, policy  # then on the grid again


def test_mirror_disabled_and_removed_jobs_are_not_the_masters() -> None:
    schedule = Schedule(master_scheduled)
    schedule.set_job("g.j", spec(mode="mirror"), T0)
    schedule.set_job("g.k", spec(enabled=False), T0)
    assert schedule.next_due() is None
    schedule.set_job("g.j", spec(), T0)
    assert schedule.next_due() == T0 + 10
    schedule.set_job("g.j", None, T0)  # deleted
    assert schedule.next_due() is None and schedule.tick(T0 + 100) == []


def test_a_changed_definition_replaces_the_old_schedule() -> None:
    schedule = Schedule(master_scheduled)
    schedule.set_job("g.j", spec(every="10s"), T0)
    schedule.set_job("g.j", spec(every="7s"), T0 + 1)
    # Every 7 s on the epoch grid (7 * 257142857 = T0 - 1): T0+6, T0+13, T0+20.
    assert [d.slot for d in schedule.tick(T0 + 21.5)] == [T0 + 6, T0 + 13, T0 + 20]
