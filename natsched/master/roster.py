"""The agent lives leaders saw, kept in ``natsched_state`` (``life.<agent>``).

A leader judges the agents it hears (``lost.py``); an agent that died while no master ran
(the only master upgraded, its host rebooted) and whose heartbeat expired from the agents
bucket (TTL 15 s) before a master came back was never heard by the next one: its open runs
stayed open forever and a ``redispatch_lost`` run never ran again. So the leader writes each
agent life it sees here (the heartbeat it first saw of it: a few writes per agent start, none
per heartbeat), and a new leader judges the lives recorded here that it does not hear. The
entry of an agent whose runs were closed is removed, so the next leader does not judge it again.
Masters alone write this bucket: an agent cannot plant or remove a life.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import CodecError
from natsched.kvscan import scan
from natsched.models import Heartbeat

log = logging.getLogger(__name__)


class AgentRoster:
    def __init__(self, js: JetStreamContext, state: KeyValue) -> None:
        self._js = js
        self._state = state
        self._written: dict[str, float] = {}  # agent -> the start time of the life on record

    def recorded(self, heartbeat: Heartbeat) -> bool:
        return self._written.get(heartbeat.agent) == heartbeat.started_at

    async def record(self, heartbeat: Heartbeat) -> None:
        """Put ``heartbeat``'s life on record (once per life per leader; raises on NATS trouble)."""
        life = replace(heartbeat, runs={})  # see lives()
        await self._state.put(subjects.agent_life_key(heartbeat.agent), codec.encode_heartbeat(life))
        self._written[heartbeat.agent] = heartbeat.started_at

    async def lives(self) -> dict[str, Heartbeat]:
        """Every agent life on record: the heartbeat a leader saw of it (and, from now on, what
        this master takes to be on record: a life another leader removed meanwhile, its agent
        back since, is written again, not taken for written)."""
        found: dict[str, Heartbeat] = {}
        written: dict[str, float] = {}
        for key, entry in (await scan(self._js, subjects.STATE_BUCKET, subjects.AGENT_LIVES)).items():
            agent = subjects.life_agent(key)
            try:
                # Without the runs its heartbeat listed when a leader first saw it: they may have
                # ended a day ago, beyond what the lost pass reads, and were taken for open runs
                # (recorded lost, re-dispatched). The streams and claims name the life's runs.
                found[agent] = replace(codec.decode_heartbeat(entry.value, agent), runs={})
            except CodecError as exc:
                log.warning("agent life %s ignored: %s", key, exc)
                continue
            written[agent] = found[agent].started_at
        self._written = written
        return found

    async def forget(self, heartbeat: Heartbeat) -> None:
        """Its runs are closed: off the record, unless the agent started a new life meanwhile."""
        key = subjects.agent_life_key(heartbeat.agent)
        try:
            entry = await self._state.get(key)
            if codec.decode_heartbeat(entry.value or b"", heartbeat.agent).started_at != heartbeat.started_at:
                return
            await self._state.delete(key, last=entry.revision)
        except (KeyNotFoundError, CodecError):
            pass
        except Exception as exc:  # noqa: BLE001 - written meanwhile, or NATS away: judged again later
            log.info("agent life %s kept (%r)", key, exc)
            return
        self._written.pop(heartbeat.agent, None)
