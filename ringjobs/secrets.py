"""Secret values at rest: AES-256-GCM with one daemon key (SPEC 7).

The key comes from `RINGJOBS_SECRET_KEY` (base64 of 32 bytes) or from a key file the
daemon creates, mode 0600, on its first start. Each value is sealed with a fresh
random nonce and bound to its `namespace/name` (associated data), so a ciphertext
copied to another row does not open. `cryptography` is imported on the first seal or
open, not with this module: the CLI never needs it, and a daemon without secrets never
pays its ~6.6 MB of RSS (issue 7). Loading and checking the key needs none of it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ringjobs.exceptions import ConfigError
from ringjobs.store.store import SealedSecret

KEY_ENV = "RINGJOBS_SECRET_KEY"
KEY_BYTES = 32
NONCE_BYTES = 12
MAX_VALUE_BYTES = 64 * 1024
_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


class SecretUnreadable(Exception):
    """A stored secret does not open with this daemon's key."""


def secret_name_problem(name: object) -> str | None:
    """Why `name` is not a valid secret name, or None."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return (
            f"invalid secret name {name!r}: use letters, digits, '.', '_' and '-' "
            "(at most 253, starting and ending with a letter or digit)"
        )
    return None


def secret_value_problem(value: object) -> str | None:
    """Why `value` cannot be an environment value, or None. Never quotes the value."""
    if not isinstance(value, str):
        return "the secret value must be a string"
    if "\x00" in value:
        return "the secret value contains a NUL byte, which no environment variable can hold"
    if len(value.encode()) > MAX_VALUE_BYTES:
        return f"the secret value is larger than {MAX_VALUE_BYTES // 1024} KiB"
    return None


@dataclass(frozen=True, repr=False)
class SecretBox:
    """Seals and opens secret values with the daemon key. Its repr never shows the key."""

    key: bytes

    def __repr__(self) -> str:
        return f"SecretBox(key_id={self.key_id})"

    @property
    def key_id(self) -> str:
        """A short fingerprint telling which key sealed a value (not usable to guess it)."""
        return hashlib.sha256(b"ringjobs-secret-key-id\x00" + self.key).hexdigest()[:16]

    def seal(self, namespace: str, name: str, value: str) -> SealedSecret:
        # Imported here: a daemon that never seals a secret never loads it (module doc).
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        nonce = os.urandom(NONCE_BYTES)
        data = AESGCM(self.key).encrypt(nonce, value.encode(), _bound_to(namespace, name))
        return SealedSecret(self.key_id, nonce, data)

    def open(self, namespace: str, name: str, sealed: SealedSecret) -> str:
        # Imported here: a daemon that never opens a secret never loads it (module doc).
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            plain = AESGCM(self.key).decrypt(
                sealed.nonce, sealed.ciphertext, _bound_to(namespace, name)
            )
        except InvalidTag:
            why = (
                f"it was sealed with another key (key id {sealed.key_id}, this daemon has "
                f"{self.key_id}); restore that key or create the secret again"
                if sealed.key_id != self.key_id
                else "its stored bytes are damaged; create the secret again"
            )
            raise SecretUnreadable(
                f"secret {namespace}/{name} cannot be decrypted: {why}"
            ) from None
        return plain.decode()


def _bound_to(namespace: str, name: str) -> bytes:
    return f"ringjobs-secret\x00{namespace}\x00{name}".encode()


def load_secret_box(key_file: Path, environ: Mapping[str, str] | None = None) -> SecretBox:
    """The daemon key: from RINGJOBS_SECRET_KEY, else the key file (created if missing)."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return SecretBox(_decode_key(env[KEY_ENV], KEY_ENV))
    return SecretBox(_key_from_file(key_file))


def generate_key_text() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"{where} must hold base64 of exactly {KEY_BYTES} random bytes "
            '(make one with: python3 -c "import base64,os;'
            'print(base64.b64encode(os.urandom(32)).decode())")'
        )
    return key


def _key_from_file(path: Path) -> bytes:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two daemons starting at once never write two different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the secret key file {path}: {exc.strerror} "
            "(set secrets.key_file in the config to a writable path)"
        ) from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(generate_key_text() + "\n")
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the secret key file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the secret key file {path} is readable by others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    return _decode_key(text, f"the secret key file {path}")
