"""The leader's term as the lease says it: the fencing token a dispatch is checked against.

Every run request carries the term of the master that sent it; an agent refuses a term
lower than the highest it has seen (a deposed leader). The term it raises to comes from the
lease in ``natsched_state`` (key ``leader``, written only by masters), read from the stream
leader when a request names a term above the one known, never from the request itself: a
request claiming term 10**9 is refused and does not lock the real master out.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from natsched import codec, subjects
from natsched.errors import CodecError

log = logging.getLogger(__name__)


class TermFence:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self.term = 0  # the highest leader term the lease has shown us

    async def refusal(self, term: int) -> str:
        """Why a request of ``term`` is refused ('' when it may run)."""
        if term > self.term:
            try:
                self.term = max(self.term, await self._leased_term())
            except Exception as exc:  # noqa: BLE001 - cannot check: run nothing, say why
                return f"cannot check term {term} against the leader lease: {exc!r}"
            if term > self.term:
                return f"term {term} is not the leader lease's ({self.term})"
        if term < self.term:
            return f"stale master: term {term} < {self.term} (another master leads now)"
        return ""

    async def _leased_term(self) -> int:
        # A plain (not direct) get: the stream leader answers, so a lease just written is seen.
        try:
            msg = await self._js.get_last_msg(
                subjects.kv_stream(subjects.STATE_BUCKET),
                subjects.kv_subject_prefix(subjects.STATE_BUCKET) + subjects.LEASE_KEY,
            )
        except NotFoundError:
            return 0
        if not msg.data:
            return 0  # deleted: no leader now
        lease = codec.unpack(msg.data, "lease")
        term = lease.get("term")
        if not isinstance(term, int) or isinstance(term, bool):
            raise CodecError(f"lease: bad term {subjects.shown(term)}")
        return term
