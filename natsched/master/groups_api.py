"""``natsched.api.settings.*``: a group's replicated settings (``group.<group>`` in natsched_settings),
and with ``tag`` its layer for agents with that tag (``group.<group>.tag.<tag>``).

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
        group, tag = _group(body), _tag(body)
        try:
            settings = parse_group_settings(body.get("settings") or {}, group, tag)
        except SpecError as exc:
            raise ApiError(f"settings of group {group}{_of_tag(tag)}: {exc}") from None
        key = subjects.group_settings_key(group, tag)
        await self._kv.put(key, codec.pack(group_settings_to_dict(settings)))
        return {"settings": group_settings_to_dict(settings)}

    async def get(self, body: dict[str, Any]) -> dict[str, Any]:
        """One group's settings and its tag layers, or every group's when no group is given."""
        wanted = body.get("group")
        found = await scan(self._js, subjects.SETTINGS_BUCKET, f"{subjects.GROUP_SETTINGS_PREFIX}>")
        groups: list[dict[str, Any]] = []
        for key, stored in sorted(found.items()):
            names = subjects.split_group_settings_key(key)
            if names is None or (wanted and names[0] != wanted):
                continue
            group, tag = names
            try:
                settings = parse_group_settings(codec.unpack(stored.value, key), group, tag)
                groups.append(group_settings_to_dict(settings))
            except (CodecError, SpecError) as exc:
                groups.append({"group": group, **({"tag": tag} if tag else {}), "invalid": str(exc)})
        if wanted and not groups:
            raise NotFoundError(f"group {wanted!r} has no settings (defaults apply: replication easy)")
        return {"groups": groups}

    async def delete(self, body: dict[str, Any]) -> dict[str, Any]:
        group, tag = _group(body), _tag(body)
        key = subjects.group_settings_key(group, tag)
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            raise NotFoundError(f"group {group!r}{_of_tag(tag)} has no settings") from None
        await self._kv.delete(key)
        return {"deleted": group, **({"tag": tag} if tag else {})}


def _group(body: dict[str, Any]) -> str:
    group = body.get("group")
    if not isinstance(group, str):
        raise ApiError("request field 'group' is required")
    return group


def _tag(body: dict[str, Any]) -> str | None:
    tag = body.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise ApiError("request field 'tag' must be a tag name")
    return tag


def _of_tag(tag: str | None) -> str:
    return "" if tag is None else f" for tag {tag}"
