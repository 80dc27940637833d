"""Values only masters write, put back when nats-server itself wrote over them.

nats-server sends the acknowledgement of a JetStream publish (``{"stream": …, "seq": …}``) and
the answer of a JetStream API request to whatever reply subject the client names, unchecked
against its permissions: an agent, which may write its own heartbeat, can so have the server
write over any key of any bucket. Such a value is never one a master writes (a msgpack map;
for a secret, a ciphertext that authenticates under its name), so masters put back what it
replaced: with a compare-and-set on the foreign value's revision, so an operator's change (or
another master's put-back) that came first wins, and a newer foreign value is met again.
Job definitions are put back by ``JobIndex``, which holds them; settings from the bucket's
history (5 revisions); secrets from the last authentic ciphertext each master saw.
"""

from __future__ import annotations

import logging

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from natsched import codec
from natsched.errors import SecretError
from natsched.secrets import decrypt
from natsched.subjects import SECRETS_BUCKET

log = logging.getLogger(__name__)
DELETED = ("DEL", "PURGE")


async def put_back(kv: KeyValue, what: str, value: bytes, revision: int) -> None:
    """Write ``value`` over the foreign value at ``revision`` (nothing if the key moved on);
    ``what`` is ``<bucket> <key>``."""
    key = what.split(" ", 1)[1]
    try:
        await kv.update(key, value, last=revision)
        log.warning("%s: a value no master wrote replaced it; put back", what)
    except KeyWrongLastSequenceError:
        pass  # written again meanwhile: an operator's change, or another master's put-back
    except Exception as exc:  # noqa: BLE001 - NATS trouble: it stays foreign (readers skip it)
        log.warning("%s: a value no master wrote replaced it; not put back: %r", what, exc)


async def put_back_from_history(kv: KeyValue, bucket: str, key: str, revision: int) -> None:
    """Put back the newest value before ``revision`` that a master wrote, if the bucket kept one."""
    try:
        entries = await kv.history(key)
    except Exception as exc:  # noqa: BLE001 - NATS trouble, or no history left
        log.warning("%s %s: a value no master wrote replaced it; history not read: %r", bucket, key, exc)
        return
    for entry in reversed(entries):
        if (entry.revision or 0) >= revision:
            continue
        if entry.operation in DELETED:
            return  # it had been deleted: readers skip the foreign value as they skip a missing one
        if codec.is_packed_map(entry.value):
            await put_back(kv, f"{bucket} {key}", entry.value or b"", revision)
            return


class SecretsKept:
    """A master's watch of the secrets bucket: the last authentic ciphertext of each secret
    (ciphertext only: nothing decrypted is kept), put back over a value that does not
    authenticate under its name. Without the key a master cannot tell, and keeps nothing."""

    def __init__(self, kv: KeyValue, key: bytes) -> None:
        self._kv = kv
        self._key = key
        self._kept: dict[str, bytes] = {}

    async def watch(self) -> None:
        watcher = await self._kv.watchall()
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in DELETED:
                self._kept.pop(entry.key, None)
                continue
            value = entry.value or b""
            try:
                decrypt(self._key, entry.key, value)
            except SecretError:
                kept = self._kept.get(entry.key)
                if kept is not None:
                    await put_back(self._kv, f"{SECRETS_BUCKET} {entry.key}", kept, entry.revision or 0)
                continue
            self._kept[entry.key] = value
