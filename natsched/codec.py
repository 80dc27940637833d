"""The only module that knows the wire formats: msgpack inside, JSON at the edge.

Every payload carries ``"v": PROTOCOL_VERSION``. A payload without it, or with a
version we do not speak, is rejected with a clear :class:`CodecError` /
:class:`VersionError` instead of being half-understood.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import msgpack

from natsched import PROTOCOL_VERSION
from natsched.errors import CodecError, SpecError, VersionError
from natsched.jobspec import job_to_dict, parse_job
from natsched.models import Heartbeat, JobSpec

VERSION_KEY = "v"


def _check_version(obj: object, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: expected a map, got {type(obj).__name__}")
    version = obj.get(VERSION_KEY)
    if version != PROTOCOL_VERSION:
        if isinstance(version, int) and version > PROTOCOL_VERSION:
            raise VersionError(
                f"{what}: written with protocol v{version}, this natsched speaks v{PROTOCOL_VERSION}; "
                "upgrade this component"
            )
        raise VersionError(f"{what}: missing or unknown protocol version {version!r}")
    return obj


def pack(obj: Mapping[str, Any]) -> bytes:
    """msgpack-encode a map, stamped with the protocol version."""
    return msgpack.packb({**obj, VERSION_KEY: PROTOCOL_VERSION}, use_bin_type=True)


def unpack(data: bytes, what: str) -> dict[str, Any]:
    """Decode a msgpack map and check its version; ``what`` names it in errors."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise CodecError(f"{what}: not valid msgpack ({exc})") from None
    return _check_version(obj, what)


def to_json(obj: Mapping[str, Any]) -> bytes:
    """JSON for the edge (trigger replies, events, API), stamped with the version."""
    return json.dumps({**obj, VERSION_KEY: PROTOCOL_VERSION}, separators=(",", ":"), default=str).encode()


def from_json(data: bytes, what: str, *, require_version: bool = False) -> dict[str, Any]:
    """Decode a JSON object from the edge.

    People and other languages publish here, so the version is optional unless
    ``require_version``; if present it must be one we speak. An empty body is ``{}``.
    """
    if not data.strip():
        return {}
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    if require_version or VERSION_KEY in obj:
        _check_version(obj, what)
    obj.pop(VERSION_KEY, None)
    return obj


def encode_job(spec: JobSpec) -> bytes:
    """A job spec as stored in the jobs bucket."""
    return pack(job_to_dict(spec))


def decode_job(data: bytes, key: str) -> JobSpec:
    """A job spec from the jobs bucket; any problem is a CodecError naming the key."""
    obj = unpack(data, f"job {key}")
    obj.pop(VERSION_KEY)
    try:
        spec = parse_job(obj, source=f"kv {key}")
    except SpecError as exc:
        raise CodecError(str(exc)) from None
    if spec.key != key:
        # Written past the master (or by a bug): trusting it would list the job twice and
        # index it under a key that does not hold it.
        raise CodecError(f"job {key}: holds the definition of {spec.key}, not of {key}")
    return spec


def encode_heartbeat(heartbeat: Heartbeat) -> bytes:
    return pack(asdict(heartbeat))


def decode_heartbeat(data: bytes, key: str) -> Heartbeat:
    obj = unpack(data, f"heartbeat {key}")
    obj.pop(VERSION_KEY)
    try:
        for name in ("tags", "pools", "groups"):
            obj[name] = tuple(obj.get(name, ()))
        return Heartbeat(**obj)
    except TypeError as exc:
        raise CodecError(f"heartbeat {key}: {exc}") from None
