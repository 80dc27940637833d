"""The only module that knows the wire formats: msgpack inside, JSON at the edge.

Every payload carries ``"v": PROTOCOL_VERSION``. A payload without it, or with a
version we do not speak, is rejected with a clear :class:`CodecError` /
:class:`VersionError` instead of being half-understood.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

import msgpack

from natsched import PROTOCOL_VERSION, subjects
from natsched.errors import CodecError, SpecError, VersionError
from natsched.jobspec import job_to_dict, parse_job
from natsched.models import Heartbeat, JobSpec
from natsched.vocab import NO_AGENT

VERSION_KEY = "v"
MAX_DEPTH = 32  # JSON requests: deeper nesting is refused (no request needs more than ~5)


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


# First byte of a msgpack map (fixmap, map16, map32): every value ``pack`` makes starts so.
_MAP_FIRST = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def is_packed_map(data: bytes | None) -> bool:
    """Could ``data`` be a value ``pack`` made? (A look at its first byte, no decoding.)"""
    return data is not None and len(data) > 0 and data[0] in _MAP_FIRST


def unpack(data: bytes, what: str) -> dict[str, Any]:
    """Decode a msgpack map and check its version; ``what`` names it in errors."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise CodecError(f"{what}: not valid msgpack ({exc})") from None
    return _check_version(obj, what)


# One encoder and one strict decoder: json.dumps/loads with options build a new one per call,
# on every trigger, reply and event.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def to_json(obj: Mapping[str, Any]) -> bytes:
    """JSON for the edge (trigger replies, events, API), stamped with the version."""
    return _ENCODER.encode({**obj, VERSION_KEY: PROTOCOL_VERSION}).encode()


def _refuse_constant(name: str) -> object:
    raise CodecError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CodecError(f"{text[:20]} is out of range")
    return value


_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite)


def _strict_loads(data: bytes) -> Any:
    """``json.loads(data, parse_constant=..., parse_float=...)`` with one decoder for all calls."""
    return _STRICT_DECODER.decode(data.decode(json.detect_encoding(data), "surrogatepass"))


def check_strict(obj: object, what: str) -> None:
    """No nesting deeper than MAX_DEPTH, no NUL character in any key or string (iterative:
    the check must not itself recurse on hostile input)."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CodecError(f"{what}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            if "\0" in item:
                raise CodecError(f"{what}: a NUL character in a string")
        elif isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((value, depth + 1) for value in item.values())
        elif isinstance(item, list):
            stack.extend((value, depth + 1) for value in item)


def from_json(
    data: bytes, what: str, *, require_version: bool = False, strict: bool = False
) -> dict[str, Any]:
    """Decode a JSON object from the edge.

    People and other languages publish here, so the version is optional unless
    ``require_version``; if present it must be one we speak. An empty body is ``{}``.
    ``strict`` (requests: API, triggers) also refuses NaN/Infinity, NUL characters and
    nesting deeper than MAX_DEPTH; run events keep NUL (a process may print one).
    """
    if not data.strip():
        return {}
    try:
        obj = _strict_loads(data) if strict else json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, or an int of > 4300 digits
        raise CodecError(f"{what}: not valid JSON ({str(exc)[:200]})") from None
    except RecursionError:
        raise CodecError(f"{what}: nested too deeply") from None
    if not isinstance(obj, dict):
        raise CodecError(f"{what}: expected a JSON object, got {type(obj).__name__}")
    if strict:
        check_strict(obj, what)
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


def _fits(value: object, annotation: str) -> bool:
    """Does a wire value have the type a Heartbeat field is annotated with?"""
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53
    if annotation == "float":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if annotation == "tuple[str, ...]":  # tags, pools, groups: names
        return isinstance(value, list | tuple) and all(subjects.is_token(v) for v in value)
    if annotation == "Mapping[str, str]":
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
    return True  # a type this check does not know: the dataclass decides


_HEARTBEAT_TYPES = {f.name: str(f.type) for f in fields(Heartbeat)}


def decode_heartbeat(data: bytes, key: str) -> Heartbeat:
    """A heartbeat from the agents bucket, every field of its type and naming its own key:
    agents write this bucket, so one bad entry must be skipped, not trusted."""
    obj = unpack(data, f"heartbeat {key}")
    obj.pop(VERSION_KEY)
    unknown = sorted(repr(k)[:40] for k in set(obj) - set(_HEARTBEAT_TYPES))
    if unknown:
        raise CodecError(f"heartbeat {key}: unknown field(s) {', '.join(unknown[:5])}")
    for name, value in obj.items():
        if not _fits(value, _HEARTBEAT_TYPES[name]):
            raise CodecError(f"heartbeat {key}: field {name!r} is not a {_HEARTBEAT_TYPES[name]}")
    if key == NO_AGENT:  # reserved: runs recorded with it never ran on an agent
        raise CodecError(f"heartbeat {key}: the agent name {NO_AGENT!r} is reserved")
    if obj.get("agent") != key:
        raise CodecError(f"heartbeat {key}: names agent {subjects.shown(obj.get('agent'), 40)}, not {key}")
    try:
        for name in ("tags", "pools", "groups"):
            obj[name] = tuple(obj.get(name, ()))
        return Heartbeat(**obj)
    except TypeError as exc:
        raise CodecError(f"heartbeat {key}: {exc}") from None
