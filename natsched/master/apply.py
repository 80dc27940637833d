"""Applying a job file: a pure plan (what changes), then compare-and-set writes.

The plan compares canonical mappings, so re-applying an unchanged file writes nothing
(no revision churn, no agent wake-ups). Writes use the revision the plan saw: if
another apply changed a job in between, that job fails with a conflict instead of
silently overwriting the other person's change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec
from natsched.errors import ConflictError, SpecError
from natsched.jobdiff import field_changes
from natsched.jobfile import JobFile
from natsched.jobspec import job_to_dict
from natsched.master.jobindex import Stored
from natsched.models import JobSpec
from natsched.triggers.once import OnceTrigger

# JetStream's error codes for "expected last subject sequence" mismatches.
_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(kw_only=True, slots=True)
class ApplyPlan:
    created: list[JobSpec] = field(default_factory=list)
    updated: list[tuple[JobSpec, int]] = field(default_factory=list)  # (new spec, revision seen)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[tuple[str, int]] = field(default_factory=list)  # (key, revision seen)
    changes: dict[str, list[str]] = field(default_factory=dict)  # updated key -> field changes

    def summary(self) -> dict[str, Any]:
        return {
            "created": [s.key for s in self.created],
            "updated": [s.key for s in self.updated_specs],
            "unchanged": list(self.unchanged),
            "deleted": [k for k, _ in self.deleted],
            "changes": self.changes,
        }

    @property
    def updated_specs(self) -> list[JobSpec]:
        return [spec for spec, _ in self.updated]


def _same(spec: JobSpec, stored: Stored) -> bool:
    # Garbage in the bucket (no spec) is never the same: overwrite it with the valid definition.
    return stored.spec is not None and job_to_dict(stored.spec) == job_to_dict(spec)


class JobsAfter(Mapping[str, JobSpec]):
    """Every job the bucket holds once ``plan`` is written, as a view over ``jobs`` (nothing copied)."""

    def __init__(self, jobs: Mapping[str, JobSpec], plan: ApplyPlan) -> None:
        self._jobs = jobs
        self.changed = {spec.key: spec for spec in [*plan.created, *plan.updated_specs]}
        self.removed = {key for key, _ in plan.deleted}

    def __getitem__(self, key: str) -> JobSpec:
        if key in self.changed:
            return self.changed[key]
        if key in self.removed:
            raise KeyError(key)
        return self._jobs[key]

    def __contains__(self, key: object) -> bool:
        return key in self.changed or (key not in self.removed and key in self._jobs)

    def __iter__(self) -> Iterator[str]:
        yield from self.changed
        yield from (k for k in self._jobs if k not in self.changed and k not in self.removed)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def plan_apply(job_file: JobFile, current: Mapping[str, Stored], *, prune: bool) -> ApplyPlan:
    """What applying ``job_file`` over ``current`` (the bucket's keys in its groups) changes."""
    plan = ApplyPlan()
    for spec in job_file.jobs:
        stored = current.get(spec.key)
        if stored is None:
            plan.created.append(spec)
        elif _same(spec, stored):
            plan.unchanged.append(spec.key)
        else:
            plan.updated.append((spec, stored.revision))
            before = job_to_dict(stored.spec) if stored.spec is not None else {}
            plan.changes[spec.key] = field_changes(before, job_to_dict(spec))
    if prune:
        wanted = {spec.key for spec in job_file.jobs}
        for key in sorted(current):
            group = key.partition(".")[0]
            if group in job_file.groups and key not in wanted:
                plan.deleted.append((key, current[key].revision))
    return plan


def check_no_past_once(plan: ApplyPlan, current: Mapping[str, Stored], now: datetime) -> None:
    """Refuse a new or changed ``at`` that has already passed: it would be stored and never fire.

    A job whose ``at`` was already stored (it fired, or was skipped) stays acceptable, so
    re-applying yesterday's file is not an error.
    """
    for spec in [*plan.created, *plan.updated_specs]:
        stored = current.get(spec.key)
        before = stored.spec.triggers if stored is not None and stored.spec is not None else ()
        for trigger in spec.triggers:
            if isinstance(trigger, OnceTrigger) and trigger.at <= now and trigger not in before:
                raise SpecError(
                    f"{trigger.at.isoformat()} is in the past, so the job would never run; "
                    "give a later time, or use 'natsched run' to start it now",
                    job=spec.name,
                    field="triggers.at",
                )


async def execute_plan(kv: KeyValue, plan: ApplyPlan) -> list[str]:
    """Write the plan; return the conflicts (keys changed by someone else) instead of overwriting."""
    conflicts: list[str] = []
    for spec in plan.created:
        try:
            await kv.create(spec.key, codec.encode_job(spec))
        except KeyWrongLastSequenceError:
            conflicts.append(spec.key)
    for spec, revision in plan.updated:
        try:
            await kv.update(spec.key, codec.encode_job(spec), last=revision)
        except KeyWrongLastSequenceError:
            conflicts.append(spec.key)
    for key, revision in plan.deleted:
        try:
            await kv.delete(key, last=revision)
        except APIError as exc:
            if exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise
            conflicts.append(key)
    return conflicts


def raise_conflicts(conflicts: list[str]) -> None:
    if conflicts:
        raise ConflictError(
            f"{len(conflicts)} job(s) changed by someone else during apply, not overwritten: "
            + ", ".join(conflicts[:10])
            + ("…" if len(conflicts) > 10 else "")
            + "; apply again"
        )
