"""``natsched.api.settings.*``: a group's replicated settings (``group.<group>`` in natsched_settings).

See ``natsched/groupsettings.py`` for what they hold and how agents apply them.
"""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from natsched import codec, subjects
from natsched.errors import ApiError, CodecError, NotFoundError, SpecError
from natsched.groupsettings import group_settings_to_dict, parse_group_settings
from natsched.kvscan import scan


class GroupSettingsApi:
    def __init__(self, js: JetStreamContext, settings: KeyValue) -> None:
        self._js = js
        self._kv = settings

    def handlers(self) -> dict[str, Any]:
        return {
            subjects.API_SETTINGS_SET: self.set,
            subjects.API_SETTINGS_GET: self.get,
            subjects.API_SETTINGS_DELETE: self.delete,
        }

    async def set(self, body: dict[str, Any]) -> dict[str, Any]:
        group = _group(body)
        try:
            settings = parse_group_settings(body.get("settings") or {}, group)
        except SpecError as exc:
            raise ApiError(f"settings of group {group}: {exc}") from None
        await self._kv.put(subjects.group_settings_key(group), codec.pack(group_settings_to_dict(settings)))
        return {"settings": group_settings_to_dict(settings)}

    async def get(self, body: dict[str, Any]) -> dict[str, Any]:
        """One group's settings, or every group's when no group is given."""
        wanted = body.get("group")
        found = await scan(self._js, subjects.SETTINGS_BUCKET, f"{subjects.GROUP_SETTINGS_PREFIX}>")
        groups: list[dict[str, Any]] = []
        for key, stored in sorted(found.items()):
            group = key[len(subjects.GROUP_SETTINGS_PREFIX) :]
            if wanted and group != wanted:
                continue
            try:
                groups.append(
                    group_settings_to_dict(parse_group_settings(codec.unpack(stored.value, key), group))
                )
            except (CodecError, SpecError) as exc:
                groups.append({"group": group, "invalid": str(exc)})
        if wanted and not groups:
            raise NotFoundError(f"group {wanted!r} has no settings (defaults apply: replication easy)")
        return {"groups": groups}

    async def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        group = _group(body)
        key = subjects.group_settings_key(group)
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            raise NotFoundError(f"group {group!r} has no settings") from None
        await self._kv.delete(key)
        return {"deleted": group}


def _group(body: dict[str, Any]) -> str:
    group = body.get("group")
    if not isinstance(group, str):
        raise ApiError("request field 'group' is required")
    return group
