"""Attack: an agent leaves traces of slots it never ran, so a slot a dead leader dropped is not
recorded lost.

A leader that dies between claiming a slot and dispatching it leaves the slot to the next
leader's audit, which records it ``lost`` unless a run event of that job and slot exists. Any
event counted, from any agent, with any agent in its body: agent a3, targeted by nothing, could
publish ``started`` events of every future slot of a job (cron slots are predictable), so a slot
dropped that way was missed silently. Traces now count only events whose body matches their
subject, from an agent the job targets (or the masters' own records).
"""

from __future__ import annotations

import asyncio
import time

from natsched import codec, subjects
from natsched.client import AdminClient
from natsched.events import RunEvent, new_run_id
from natsched.master.scheduler import KvCursors
from natsched.master.service import MasterService
from natsched.master.slotaudit import SlotAudit
from natsched.vocab import RunState, RunTrigger
from tests.conftest import eventually
from tests.helpers import job, stream_events, toml_jobs
from tests.security.hostile import Secured


async def test_an_agent_cannot_hide_a_dropped_slot_behind_a_made_up_trace(secured: Secured) -> None:
    leader = MasterService(secured.settings("natsched-master"))
    async with leader, AdminClient(secured.settings("natsched-admin")) as admin:
        reply = await admin.call(
            subjects.API_APPLY,
            {
                "source": "sec.toml",
                "content": toml_jobs(
                    job(
                        "hourly", mode="slave", targets={"agents": ["a1"]}, triggers=[{"cron": "0 0 * * * *"}]
                    ),
                    group="sec",
                ),
            },
        )
        assert reply["ok"], reply
        master = await secured.connect("natsched-master")
        js = master.jetstream()
        state = await js.key_value(subjects.STATE_BUCKET)
        slot = float(int(time.time()))
        # A previous leader claimed the slot and died before sending it.
        claim = {"slot": slot, "at": time.time(), "by": "x", "master": "m0", "trigger": "cron"}
        await state.put(subjects.cursor_key("sec.hourly"), codec.pack(claim))

        # a3 leaves "traces" of the slot: in its own name, and in a1's name on its own subject.
        a3 = await secured.connect("agent-a3")
        for agent in ("a3", "a1"):
            forged = RunEvent(
                run_id=new_run_id(),
                job="sec.hourly",
                agent=agent,
                state=RunState.STARTED,
                trigger=RunTrigger.CRON,
                scheduled_at=slot,
            )
            subject = subjects.event_subject("a3", "sec.hourly", RunState.STARTED.value)
            await a3.jetstream().publish(subject, forged.to_json())

        cursors = KvCursors(state, js=js, master_id="m1")
        assert await cursors.load("sec.hourly") == slot
        audit = asyncio.create_task(SlotAudit(js, cursors, settle=0.1, could_run=leader.could_run_job).run())
        try:

            async def recorded() -> bool:
                return any(
                    e["job"] == "sec.hourly" and e["scheduled_at"] == slot and e["state"] == "lost"
                    for e in await stream_events(master)
                )

            await eventually(recorded, 10, "the dropped slot was recorded lost")
        finally:
            audit.cancel()
