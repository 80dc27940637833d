"""Admin API for secrets: the master encrypts, so operators (and the CLI) need no key.

``natsched.api.secrets.set`` {"name", "value"} -> {"name"} (the value is never echoed or
logged), ``.list`` {} -> {"secrets": [names]}, ``.delete`` {"name"} -> {"deleted"}.
"""

from __future__ import annotations

from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import subjects
from natsched.errors import ApiError, NotFoundError, SecretError
from natsched.secrets import check_name, encrypt


class SecretsApi:
    def __init__(self, kv: KeyValue, key: bytes | None) -> None:
        self._kv = kv
        self._key = key

    def handlers(self) -> dict[str, Any]:
        return {
            subjects.API_SECRETS_SET: self.set,
            subjects.API_SECRETS_LIST: self.list,
            subjects.API_SECRETS_DELETE: self.delete,
        }

    def _name(self, body: dict[str, Any]) -> str:
        name = body.get("name")
        if not isinstance(name, str):
            raise ApiError("request field 'name' must be a secret name")
        try:
            return check_name(name)
        except SecretError as exc:
            raise ApiError(str(exc)) from None

    async def set(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._name(body)
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise ApiError("request field 'value' must be a non-empty string")
        if self._key is None:
            raise ApiError("this master has no secret key; start it with --secret-key-file")
        try:
            await self._kv.put(name, encrypt(self._key, name, value))
        except SecretError as exc:
            raise ApiError(str(exc)) from None
        return {"name": name}

    async def list(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            names = sorted(await self._kv.keys())
        except Exception:  # noqa: BLE001 - nats-py raises NoKeysError for an empty bucket
            names = []
        return {"secrets": names}

    async def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        name = self._name(body)
        try:
            await self._kv.get(name)
        except KeyNotFoundError:
            raise NotFoundError(f"no secret {name!r}") from None
        await self._kv.delete(name)
        return {"deleted": name}
