"""The agent's access to secrets: read from ``natsched_secrets`` and decrypted at run start.

Values are never cached on disk and never logged. Without NATS a run that needs a secret
fails with a clear reason (its value cannot be read), rather than running without it.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from natsched.errors import SecretError
from natsched.secrets import decrypt
from natsched.subjects import SECRETS_BUCKET

READ_TIMEOUT = 5.0


class SecretStore:
    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self.js: JetStreamContext | None = None  # set once connected

    async def resolve(self, names: set[str]) -> dict[str, str]:
        if self._key is None:
            raise SecretError(
                f"the job uses secret(s) {', '.join(sorted(names))} but this agent has no secret key "
                "(secret_key_file / NATSCHED_AGENT_SECRET_KEY_FILE)"
            )
        if self.js is None:
            raise SecretError(f"secret(s) {', '.join(sorted(names))} cannot be read: not connected to NATS")
        values: dict[str, str] = {}
        try:
            kv = await asyncio.wait_for(self.js.key_value(SECRETS_BUCKET), READ_TIMEOUT)
            for name in sorted(names):
                try:
                    entry = await asyncio.wait_for(kv.get(name), READ_TIMEOUT)
                except KeyNotFoundError:
                    raise SecretError(f"secret {name} does not exist (natsched secrets set {name})") from None
                values[name] = decrypt(self._key, name, entry.value or b"")
        except SecretError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS trouble: one line, no value involved
            raise SecretError(f"secrets cannot be read now: {exc or type(exc).__name__}") from None
        return values
