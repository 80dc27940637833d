"""The chaos run's accounting: witness files held against the events stream (see bench/chaos.py)."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natsched.vocab import NO_AGENT

AGENTS = ("a1", "a2", "a3")
GROUP = "chaos"
ANY_TARGET = "*"  # in a recorded slot's key: the record covers every target

COUNTS = (
    "run ids executed twice",
    "slots executed by two runs",
    "executions of no due slot",
    "silent misses",
    "executions with no started event",
    "succeeded but never executed",
    "runs left open",
    "chain hops missed/doubled/unfounded",
    "duplicate agent names accepted",
    "faults not done or never healed",
)


@dataclass
class Healed:
    fault: str
    target: str
    seconds: float | None  # None: did not heal within the bound
    happened: bool = True  # False: the fault could not be done (e.g. no leader found)
    # When it was noted (healed, or given up on): to set a missed slot beside the faults.
    noted_at: float = field(default_factory=time.time)

    @property
    def problem(self) -> bool:
        # A twin that was not refused has its own count.
        return not self.happened or (self.seconds is None and self.fault != "duplicate_agent")


@dataclass
class ChaosResult:
    seed: int
    counts: dict[str, int]
    executions: int
    slots_checked: int
    healed: list[Healed] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first few offenders, for the report
    revived: list[str] = field(default_factory=list)  # services that exited and were restarted


def upstream_success(event: dict[str, Any]) -> bool:
    return bool(event["job"] == f"{GROUP}.lb" and event["state"] == "succeeded")


def open_runs(events: list[dict[str, Any]]) -> set[str]:
    latest: dict[str, str] = {}
    for event in events:
        if latest.get(event["run_id"]) in (None, "queued", "started"):
            latest[event["run_id"]] = event["state"]
    return {run for run, state in latest.items() if state in ("queued", "started")}


class Ledger:
    """The witness files held against the events: what ran, what was recorded, what is missing."""

    NOT_RUN = ("failed", "timed_out", "killed", "lost", "skipped")

    def __init__(
        self, events: list[dict[str, Any]], executions: list[tuple[str, str, str]], start: float, end: float
    ) -> None:
        self.events = events
        self.executions = executions
        self.start, self.end = start, end
        self.by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for event in events:
            self.by_run[event["run_id"]].append(event)
        self.problems: list[str] = []
        self.slots_checked = 0

    def _note(self, what: str) -> int:
        self.problems.append(what)
        return 1

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(COUNTS, 0)
        ran = Counter(run_id for _, run_id, _ in self.executions)
        counts["run ids executed twice"] = sum(
            self._note(f"run {r} executed {n}x") for r, n in ran.items() if n > 1
        )
        counts["executions with no started event"] = sum(
            self._note(f"run {r} executed without a started event")
            for r in ran
            if not any(e["state"] == "started" for e in self.by_run.get(r, []))
        )
        counts["succeeded but never executed"] = sum(
            self._note(f"run {r} succeeded but never executed")
            for r, evs in self.by_run.items()
            if any(e["state"] == "succeeded" for e in evs)
            and r not in ran
            and evs[0]["job"].startswith(GROUP)
        )
        counts["runs left open"] = sum(self._note(f"run {r} left open") for r in open_runs(self.events))
        counts["executions of no due slot"] = self._off_the_grid()
        counts["slots executed by two runs"], counts["silent misses"] = self._slots(ran)
        counts["chain hops missed/doubled/unfounded"] = self._chain(ran)
        return counts

    def _slot_of(self, run_id: str) -> float | None:
        return next((e["scheduled_at"] for e in self.by_run.get(run_id, []) if e.get("scheduled_at")), None)

    def _off_the_grid(self) -> int:
        """Executions of the every-second jobs whose run names no whole second as its slot: no
        slot would count them, so a second copy of a slot fired under another time would go
        unseen. (A run with no event at all has its own count.)"""
        return sum(
            self._note(f"run {run_id} of {job} executed for slot {slot}, not a whole second")
            for job, run_id, _ in self.executions
            if job != f"{GROUP}.chained"
            and run_id in self.by_run
            and ((slot := self._slot_of(run_id)) is None or slot != int(slot))
        )

    def _slots(self, ran: Counter[str]) -> tuple[int, int]:
        executed: dict[tuple[str, float, str], set[str]] = defaultdict(set)
        for job, run_id, agent in self.executions:
            slot = self._slot_of(run_id)
            if slot is not None and job != f"{GROUP}.chained":
                executed[(job, slot, "" if job == f"{GROUP}.lb" else agent)].add(run_id)
        recorded: set[tuple[str, float, str]] = set()
        for event in self.events:
            if event["state"] in self.NOT_RUN and event.get("scheduled_at"):
                # A run the master recorded itself before any agent had it (e.g. a slot the
                # slot audit found claimed and never dispatched) names no agent: it records
                # the slot on every target.
                if event["agent"] == NO_AGENT:
                    agent = ANY_TARGET
                else:
                    agent = "" if event["job"] == f"{GROUP}.lb" else event["agent"]
                recorded.add((event["job"], event["scheduled_at"], agent))
        doubled = sum(
            self._note(f"{job} slot {slot:.0f} on {agent or 'the pool'} ran as {sorted(runs)}")
            for (job, slot, agent), runs in executed.items()
            if len(runs) > 1
        )
        missed = 0
        for slot in range(int(self.start) + 1, int(self.end)):
            for job, targets in (
                (f"{GROUP}.mirror", AGENTS),
                (f"{GROUP}.slave", AGENTS),
                (f"{GROUP}.lb", ("",)),
            ):
                for agent in targets:
                    self.slots_checked += 1
                    key = (job, float(slot), agent)
                    if (
                        key not in executed
                        and key not in recorded
                        and (job, float(slot), ANY_TARGET) not in recorded
                    ):
                        missed += self._note(
                            f"{job} slot {slot} on {agent or 'the pool'}: no run, nothing recorded"
                        )
        return doubled, missed

    def _chain(self, ran: Counter[str]) -> int:
        """Each upstream success is followed by one downstream execution: none (for a success
        inside the window: a later one may meet the chained job disabled) or two are counted,
        and so is a downstream execution whose upstream never succeeded."""
        succeeded = {e["run_id"] for e in self.events if upstream_success(e)}
        upstream_ok = {e["run_id"] for e in self.events if upstream_success(e) and float(e["at"]) < self.end}
        followers: dict[str, set[str]] = defaultdict(set)
        for event in self.events:
            if event["job"] == f"{GROUP}.chained":
                for parent in event.get("detail", {}).get("parents", "").split(","):
                    followers[parent].add(event["run_id"])
        bad = 0
        for parent in sorted(upstream_ok | set(followers)):
            runs = followers.get(parent, set())
            executed = sum(ran[r] for r in runs)
            if executed and parent not in succeeded:
                bad += self._note(
                    f"downstream runs {sorted(runs)} executed for {parent or 'no upstream'}, not a success"
                )
            elif executed > 1 or (parent in upstream_ok and not runs):
                bad += self._note(f"upstream {parent}: downstream runs {sorted(runs)}, executed {executed}x")
        return bad


def print_result(result: ChaosResult, say: Callable[[str], None] = print) -> None:
    say(f"chaos seed {result.seed}: {result.executions} executions, {result.slots_checked} slots checked")
    for name in COUNTS:
        say(f"  {name:36} {result.counts[name]}")
    for heal in result.healed:
        took = "did not heal" if heal.seconds is None else f"{heal.seconds:.2f} s"
        took = took if heal.happened else "NOT DONE"
        say(f"  healed {heal.fault:26} {heal.target:18} {took:14} (noted at {heal.noted_at:.1f})")
    for revived in result.revived:
        say(f"  revived: {revived}")
    for problem in result.problems:
        say(f"  ! {problem}")
