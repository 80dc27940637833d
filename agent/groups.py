"""The agent's copy of each group's replicated settings (``group.<group>`` in natsched_settings).

Fed by the settings watch (``agent/holds.py``), which keeps the raw entries in SQLite, so
the settings apply while NATS is down and after a restart without NATS.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from natsched import subjects
from natsched.errors import SpecError
from natsched.groupsettings import GroupSettings, Replication, parse_group_settings

log = logging.getLogger(__name__)


class GroupTable:
    def __init__(self) -> None:
        self._settings: dict[str, GroupSettings] = {}
        self.listeners: list[Callable[[], None]] = []  # called when a replication mode changed

    def update(self, entries: Mapping[str, Any]) -> None:
        """All settings entries (raw mappings by key) as the settings watch has them now."""
        fresh: dict[str, GroupSettings] = {}
        for key, value in entries.items():
            if not key.startswith(subjects.GROUP_SETTINGS_PREFIX):
                continue
            group = key[len(subjects.GROUP_SETTINGS_PREFIX) :]
            try:
                fresh[group] = parse_group_settings(value, group)
            except (SpecError, TypeError, ValueError) as exc:
                log.warning("ignoring settings of group %s: %s", group, exc)
        modes = {g: s.replication for g, s in self._settings.items()}
        self._settings = fresh
        if modes != {g: s.replication for g, s in fresh.items()}:
            for listener in self.listeners:
                listener()

    def of(self, group: str) -> GroupSettings | None:
        return self._settings.get(group)

    def replication(self, group: str) -> Replication:
        settings = self._settings.get(group)
        return settings.replication if settings else Replication.EASY
