"""What changed in a job definition, field by field, for ``natsched apply --dry-run``.

Compares canonical mappings (``job_to_dict``) and names each changed leaf by its path:
``timeout 1h -> 2h``, ``triggers[0].cron "0 2 * * *" -> "0 3 * * *"``,
``env.TARGET (none) -> "/backup"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Fields whose numbers are seconds: shown as durations (as a job file writes them).
DURATIONS = frozenset({"timeout", "backoff", "max_backoff", "every", "settle", "kill_grace"})
_MISSING = object()


def duration_text(seconds: float) -> str:
    """3600 -> 1h, 5400 -> 1h30m, 90 -> 1m30s, 2.5 -> 2.5s."""
    if seconds != int(seconds) or seconds < 60:
        return f"{seconds:g}s"
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def _show(value: Any, name: str) -> str:
    if value is _MISSING:
        return "(none)"
    if name in DURATIONS and isinstance(value, int | float) and not isinstance(value, bool):
        return duration_text(float(value))
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def field_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``path old -> new`` for every leaf that differs (keys in the new mapping's order first)."""
    changes: list[str] = []
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before == after:
            continue
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            changes += field_changes(before, after, path)
        elif (
            isinstance(before, list)
            and isinstance(after, list)
            and len(before) == len(after)
            and all(isinstance(x, Mapping) for x in [*before, *after])
        ):
            for index, (a, b) in enumerate(zip(before, after, strict=True)):
                changes += field_changes(a, b, f"{path}[{index}]")
        else:
            changes.append(f"{path} {_show(before, str(key))} -> {_show(after, str(key))}")
    return changes
