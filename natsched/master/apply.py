"""Applying a job file: a pure plan (what changes), then compare-and-set writes.

The plan compares canonical mappings, so re-applying an unchanged file writes nothing
(no revision churn, no agent wake-ups). Writes use the revision the plan saw: if
another apply changed a job in between, that job fails with a conflict instead of
silently overwriting the other person's change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec
from natsched.errors import CodecError, ConflictError
from natsched.jobfile import JobFile
from natsched.jobspec import job_to_dict
from natsched.kvscan import KvValue
from natsched.models import JobSpec

# JetStream's error codes for "expected last subject sequence" mismatches.
_WRONG_LAST_SEQUENCE = (10071, 10164)


@dataclass(kw_only=True, slots=True)
class ApplyPlan:
    created: list[JobSpec] = field(default_factory=list)
    updated: list[tuple[JobSpec, int]] = field(default_factory=list)  # (new spec, revision seen)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[tuple[str, int]] = field(default_factory=list)  # (key, revision seen)

    def summary(self) -> dict[str, list[str]]:
        return {
            "created": [s.key for s in self.created],
            "updated": [s.key for s in self.updated_specs],
            "unchanged": list(self.unchanged),
            "deleted": [k for k, _ in self.deleted],
        }

    @property
    def updated_specs(self) -> list[JobSpec]:
        return [spec for spec, _ in self.updated]


def _same(spec: JobSpec, stored: bytes) -> bool:
    try:
        current: dict[str, Any] = codec.unpack(stored, spec.key)
    except CodecError:
        return False  # garbage in the bucket: overwrite it with the valid definition
    current.pop(codec.VERSION_KEY, None)
    return current == job_to_dict(spec)


def jobs_after(plan: ApplyPlan, stored: dict[str, KvValue]) -> dict[str, JobSpec]:
    """Every job the bucket holds once ``plan`` is written (undecodable entries left out)."""
    jobs: dict[str, JobSpec] = {}
    for key, value in stored.items():
        try:
            jobs[key] = codec.decode_job(value.value, key)
        except CodecError:
            continue
    for key, _ in plan.deleted:
        jobs.pop(key, None)
    for spec in [*plan.created, *plan.updated_specs]:
        jobs[spec.key] = spec
    return jobs


def plan_apply(job_file: JobFile, current: dict[str, KvValue], *, prune: bool) -> ApplyPlan:
    """What applying ``job_file`` over ``current`` (the bucket's keys in its groups) changes."""
    plan = ApplyPlan()
    for spec in job_file.jobs:
        stored = current.get(spec.key)
        if stored is None:
            plan.created.append(spec)
        elif _same(spec, stored.value):
            plan.unchanged.append(spec.key)
        else:
            plan.updated.append((spec, stored.revision))
    if prune:
        wanted = {spec.key for spec in job_file.jobs}
        for key, stored in sorted(current.items()):
            group = key.partition(".")[0]
            if group in job_file.groups and key not in wanted:
                plan.deleted.append((key, stored.revision))
    return plan


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
