"""The agent's copy of each group's replicated settings (``group.<group>`` in natsched_settings),
with the layers of its own tags (``group.<group>.tag.<tag>``) applied.

Fed by the settings watch (``agent/holds.py``), which keeps the raw entries in SQLite, so
the settings apply while NATS is down and after a restart without NATS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from natsched import subjects
from natsched.errors import SpecError
from natsched.groupsettings import GroupSettings, Replication, layered, parse_group_settings

log = logging.getLogger(__name__)


class GroupTable:
    def __init__(self, tags: frozenset[str] = frozenset()) -> None:
        self._tags = sorted(tags)  # a later tag's layer wins (natsched/groupsettings.py)
        self._base: dict[str, GroupSettings] = {}
        self._settings: dict[str, GroupSettings] = {}  # with this agent's tag layers applied
        self.listeners: list[Callable[[], None]] = []  # called when a replication mode changed

    def update(self, entries: Mapping[str, Any]) -> None:
        """All settings entries (raw mappings by key) as the settings watch has them now."""
        base: dict[str, GroupSettings] = {}
        layers: dict[tuple[str, str], GroupSettings] = {}
        for key, value in entries.items():
            names = subjects.split_group_settings_key(key)
            if names is None:
                continue
            group, tag = names
            if tag is not None and tag not in self._tags:
                continue
            try:
                settings = parse_group_settings(value, group, tag)
            except (SpecError, TypeError, ValueError) as exc:
                log.warning("ignoring settings of group %s%s: %s", group, f" (tag {tag})" if tag else "", exc)
                continue
            if tag is None:
                base[group] = settings
            else:
                layers[group, tag] = settings
        fresh: dict[str, GroupSettings] = {}
        for group in {*base, *(g for g, _ in layers)}:
            mine = [layers[group, t] for t in self._tags if (group, t) in layers]
            merged = layered(base.get(group), mine)
            if merged is not None:
                fresh[group] = merged
        modes = {g: s.replication for g, s in self._base.items()}
        self._base, self._settings = base, fresh
        if modes != {g: s.replication for g, s in base.items()}:
            for listener in self.listeners:
                listener()

    def of(self, group: str) -> GroupSettings | None:
        return self._settings.get(group)

    def replication(self, group: str) -> Replication:
        settings = self._base.get(group)
        return settings.replication if settings else Replication.EASY
