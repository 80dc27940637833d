"""Secrets: ``${secret:NAME}`` in a job's env values, stored encrypted in KV.

The bucket ``natsched_secrets`` holds, per name, ``nonce (12 bytes) + AES-256-GCM
ciphertext`` of the value, the name bound as associated data (a value copied under
another name does not decrypt). The 32-byte key lives in a file (``natsched secrets
keygen``, mode 0600) held by masters (to store values) and agents (to use them); a reader
of the bucket without it sees only ciphertext. The CLI sends a value to the master over
the admin API, so operators need no key.

Never in ``command``: every local user can read a process's argv (``ps``), while its
environment is readable only by its own user and root. A job file with a reference in its
command is refused at apply.

An agent resolves the references when a run starts. Each value used is masked as ``***``
in the output chunks it publishes (also when the process writes it in pieces: the stream
holds back a tail that could still become a secret), in the event's output tail and in
reasons, also in the quoted and escaped forms ``repr``, JSON and shell quoting produce.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

from natsched import subjects
from natsched.errors import ConfigError, SecretError

REFERENCE = re.compile(r"\$\{secret:([A-Za-z0-9_-]+)\}")
MASK = "***"
KEY_BYTES = 32
MAX_VALUE = 65536


def generate_key_file(path: Path) -> None:
    if path.exists():
        raise ConfigError(f"{path} exists; refusing to overwrite a secret key")
    path.parent.mkdir(parents=True, exist_ok=True)
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # heavy: only where used

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")


def load_key(path: Path) -> bytes:
    try:
        key = base64.b64decode(path.read_text().strip(), validate=True)
    except OSError as exc:
        raise ConfigError(f"cannot read secret key {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(
            f"secret key {path} is not base64 (make one with 'natsched secrets keygen')"
        ) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(f"secret key {path} is {len(key)} bytes; expected {KEY_BYTES}")
    return key


def check_name(name: str) -> str:
    if not subjects.is_token(name):
        raise SecretError(f"secret name {subjects.shown(name)} must be {subjects.TOKEN_RULE}")
    return name


def encrypt(key: bytes, name: str, value: str) -> bytes:
    if len(value.encode()) > MAX_VALUE:
        raise SecretError(f"secret {name} is over {MAX_VALUE} bytes")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # heavy: only where used

    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, value.encode(), name.encode())


def decrypt(key: bytes, name: str, blob: bytes) -> str:
    from cryptography.exceptions import InvalidTag  # heavy: only where used
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], name.encode()).decode()
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise SecretError(f"secret {name} does not decrypt with this key (another key, or damaged)") from None


def references(values: Iterable[str]) -> set[str]:
    return {m.group(1) for value in values for m in REFERENCE.finditer(value)}


def substitute(value: str, secrets: Mapping[str, str]) -> str:
    return REFERENCE.sub(lambda m: secrets[m.group(1)], value)


def check_not_in_command(command: Iterable[str]) -> None:
    """Raise SecretError if a command argument references a secret (argv is public: ``ps``)."""
    for arg in command:
        match = REFERENCE.search(arg)
        if match:
            raise SecretError(
                f"{match.group(0)} in the command would be visible to every local user (ps); "
                f'set it in env (e.g. VALUE = "{match.group(0)}") and use $VALUE'
            )


def _quoted_forms(value: str) -> set[str]:
    """How ``value`` may look inside a reason: as is, in repr (either quote), JSON, shell quoting."""
    forced_single = repr(value + "'\"")[1:-4]  # repr escapes ' only when both quotes occur
    return {
        value,
        repr(value)[1:-1],
        forced_single,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        shlex.quote(value).strip("'"),
    }


class Masker:
    """Replaces every secret value used by a run with ``***`` (longest first)."""

    def __init__(self, values: Iterable[str]) -> None:
        self._values = sorted({v for v in values if v}, key=len, reverse=True)
        self._bytes = [v.encode() for v in self._values]
        forms = {form for v in self._values for form in _quoted_forms(v)}
        self._forms = sorted((f for f in forms if f), key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    @property
    def longest(self) -> int:
        return len(self._bytes[0]) if self._bytes else 0

    def text(self, text: str) -> str:
        """Reasons and other text: every value, also quoted or escaped, becomes ``***``."""
        for form in self._forms:
            text = text.replace(form, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for value in self._bytes:
            data = data.replace(value, MASK.encode())
        return data

    def pending(self, data: bytes) -> int:
        """How many bytes at the end of ``data`` could be the start of a value (held back)."""
        window = data[-(self.longest - 1) :] if self.longest > 1 else b""
        firsts = {value[0] for value in self._bytes}
        for start, byte in enumerate(window):  # earliest first: the longest possible start
            if byte in firsts:
                tail = window[start:]
                if any(len(value) > len(tail) and value.startswith(tail) for value in self._bytes):
                    return len(tail)
        return 0

    def cut_tail(self, text: str) -> str:
        """An output tail that starts mid-output: a leading end of a value becomes ``***`` too."""
        for size in range(min(len(text), max((len(v) for v in self._values), default=0) - 1), 0, -1):
            head = text[:size]
            if any(value.endswith(head) for value in self._values if len(value) > size):
                return MASK + self.text(text[size:])
        return self.text(text)


class StreamMasker:
    """Masks a byte stream written in arbitrary pieces: a value split between two writes
    (or two 64 KiB chunks) is still found, because the end of each piece that could begin
    a value is held back until the next piece (or ``flush``) decides."""

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        if not self._masker:
            return data
        data = self._masker.data(self._held + data)
        keep = self._masker.pending(data)
        self._held = data[len(data) - keep :] if keep else b""
        return data[: len(data) - keep]

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held
