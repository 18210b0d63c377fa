"""Short-lived service tokens the bridge presents to the chat server: one per tenant, scope
``chat:ingest``, minted with the bridge's key and reused until shortly before expiry."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

LIFETIME_SECONDS = 300
#: A cached token is replaced when fewer seconds than this remain.
RENEW_BEFORE_SECONDS = 60
SUBJECT = "chat-bridge"
SCOPE = "chat:ingest"


@dataclass(frozen=True, slots=True)
class SigningKey:
    """How the bridge signs: an HS256 secret (development) or an RS256/ES256 private key."""

    algorithm: str
    key: str
    key_id: str = ""


class ServiceTokens:
    """Mints and caches the per-tenant tokens."""

    def __init__(self, *, key: SigningKey, issuer: str, audience: str) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._cache: dict[str, tuple[str, float]] = {}

    def for_tenant(self, tenant_id: str) -> str:
        """A valid token for ``tenant_id``."""
        now = time.time()
        cached = self._cache.get(tenant_id)
        if cached is not None and cached[1] - now > RENEW_BEFORE_SECONDS:
            return cached[0]
        expires = int(now) + LIFETIME_SECONDS
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": SUBJECT,
            "tenant_id": tenant_id,
            "scope": SCOPE,
            "iat": int(now),
            "exp": expires,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self._key.key_id} if self._key.key_id else None
        token = jwt.encode(claims, self._key.key, algorithm=self._key.algorithm, headers=headers)
        self._cache[tenant_id] = (token, expires)
        return token
