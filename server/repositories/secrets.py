"""Tenant secrets at rest: AES-256-GCM under a key the operator keeps outside the database.

Each value is sealed with a fresh 96-bit nonce and bound, as associated data, to the tenant and
the field it belongs to: a ciphertext copied into another tenant's or another field's place
does not open. A database dump alone therefore reveals no platform credential.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from server.domain.errors import SecretUnreadableError

_VERSION = "v1"
_NONCE_BYTES = 12
KEY_BYTES = 32


class SecretKeyError(ValueError):
    """The key file is missing, unreadable or not a base64-encoded 32-byte key."""


class SecretBox:
    """Seals and opens tenant secrets."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the tenant secrets key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        # A key of its own for fingerprints, derived: never the sealing key itself.
        self._fingerprint_key = hmac.new(
            key, b"chat-service request fingerprint", "sha256"
        ).digest()

    @classmethod
    def from_file(cls, path: Path) -> SecretBox:
        """The key in ``path``: 32 random bytes, base64-encoded (``openssl rand -base64 32``)."""
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretKeyError(f"{path}: cannot read the tenant secrets key: {exc}") from None
        try:
            key = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise SecretKeyError(f"{path}: expected a base64-encoded 32-byte key") from None
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"{path}: expected 32 bytes, found {len(key)}")
        return cls(key)

    def fingerprint(self, data: bytes) -> str:
        """A keyed digest of ``data`` (HMAC-SHA256): what identifies a request that holds
        secrets, without letting whoever reads the digest test guesses of them."""
        return hmac.new(self._fingerprint_key, data, "sha256").hexdigest()

    def seal(self, plaintext: str, *, context: str) -> str:
        """``plaintext`` encrypted and bound to ``context`` (tenant and field)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, stored: str, *, context: str) -> str:
        """The plaintext of a value :meth:`seal` produced for the same ``context``."""
        version, _, payload = stored.partition(":")
        if version != _VERSION:
            raise SecretUnreadableError("unknown secret format")
        try:
            raw = base64.b64decode(payload, validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except (binascii.Error, InvalidTag, ValueError):
            raise SecretUnreadableError("the secret does not open under this key") from None
        return plain.decode()
