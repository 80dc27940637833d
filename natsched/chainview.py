"""A chain run read back: its runs (a tree by ``detail.parents``) and its own state.

The chain id is the root run's id (or the root slave batch's id), so the runs of a chain
are found by reading the events stream from the root's start time on.

State: ``running`` while a run of it has not ended or a fan-in still waits; ``failed``
when a run failed and nothing in the chain followed from that failure (a failure branch
that ran means the failure was handled); ``succeeded`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js import JetStreamContext

from natsched import subjects
from natsched.errors import CodecError, NotFoundError
from natsched.events import parse_event
from natsched.kvscan import read_stream, scan
from natsched.runs import RunSummary, add_event, run_started_at


@dataclass(kw_only=True, slots=True)
class ChainView:
    chain_id: str
    runs: dict[str, RunSummary]  # run id -> run, in start order
    waiting: list[str] = field(default_factory=list)  # jobs whose fan-in still waits

    def parents(self, run_id: str) -> list[str]:
        listed = self.runs[run_id].latest.detail.get("parents", "")
        return [p for p in listed.split(",") if p in self.runs]

    def children(self, run_id: str) -> list[str]:
        return [r for r in self.runs if run_id in self.parents(r)]

    def roots(self) -> list[str]:
        return [r for r in self.runs if not self.parents(r)]

    @property
    def state(self) -> str:
        if self.waiting or any(not r.latest.state.final for r in self.runs.values()):
            return "running"
        for run_id, run in self.runs.items():
            if run.latest.state.failed and not self.children(run_id):
                return "failed"
        return "succeeded"


def in_chain(chain_id: str, run_id: str, detail: dict[str, str]) -> bool:
    return run_id == chain_id or detail.get("chain_id") == chain_id or detail.get("batch") == chain_id


async def read_chain(js: JetStreamContext, chain_id: str) -> ChainView:
    since = run_started_at(chain_id) - 2.0
    runs: dict[str, RunSummary] = {}
    async for msg in read_stream(js, subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS, since=since):
        try:
            event = parse_event(msg.data, msg.subject)
        except CodecError:
            continue
        if in_chain(chain_id, event.run_id, event.detail):
            add_event(runs, event)
    if not runs:
        raise NotFoundError(f"no chain run {chain_id} in {subjects.EVENTS_STREAM}")
    pending = await scan(js, subjects.CHAINS_BUCKET, subjects.chain_fanins(chain_id))
    waiting = sorted(key.split(".", 2)[2] for key in pending)
    return ChainView(chain_id=chain_id, runs=runs, waiting=waiting)
