"""Secrets: ``${secret:NAME}`` in a job's env values and args, stored encrypted in KV.

The bucket ``natsched_secrets`` holds, per name, ``nonce (12 bytes) + AES-256-GCM
ciphertext`` of the value, the name bound as associated data (a value copied under
another name does not decrypt). The 32-byte key lives in a file (``natsched secrets
keygen``, mode 0600) held by masters (to store values) and agents (to use them); a reader
of the bucket without it sees only ciphertext. The CLI sends a value to the master over
the admin API, so operators need no key.

An agent resolves the references when a run starts. Each value used is masked as ``***``
in the output chunks it publishes, in the event's output tail and in reasons. A value
split across two 64 KiB output chunks is not recognised in either half; keep secrets out
of output where you can.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from natsched import subjects
from natsched.errors import ConfigError, NatschedError

SECRETS_BUCKET = subjects.SECRETS_BUCKET
REFERENCE = re.compile(r"\$\{secret:([A-Za-z0-9_-]+)\}")
MASK = "***"
KEY_BYTES = 32
MAX_VALUE = 65536


class SecretError(NatschedError):
    """A secret that cannot be used (missing, undecryptable, no key); never contains a value."""


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


class Masker:
    """Replaces every secret value used by a run with ``***`` (longest first)."""

    def __init__(self, values: Iterable[str]) -> None:
        self._values = sorted({v for v in values if v}, key=len, reverse=True)
        self._bytes = [v.encode() for v in self._values]

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for value in self._bytes:
            data = data.replace(value, MASK.encode())
        return data
