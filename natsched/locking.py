"""The cluster-wide overlap lock's key and value, shared by agents (who hold it) and the
master (who cancels its holder for ``overlap = "replace"``)."""

from __future__ import annotations

from dataclasses import dataclass

from natsched import codec
from natsched.errors import CodecError


@dataclass(frozen=True, slots=True)
class LockHolder:
    run_id: str
    agent: str

    def __str__(self) -> str:
        return f"{self.run_id} on {self.agent}" if self.agent else "another run"


def read_holder(value: bytes | None) -> LockHolder:
    try:
        holder = codec.unpack(value or b"", "lock")
        return LockHolder(run_id=str(holder["run_id"]), agent=str(holder["agent"]))
    except (CodecError, KeyError, TypeError):
        return LockHolder(run_id="?", agent="")
