"""Visitor tokens: short-lived JWTs with scope ``chat:web``, ``sub`` the visitor, signed with
the bridge's key so that the chat server verifies them as it does every token, and the
identity check of a logged-in user (HMAC-SHA256 of the user id, like Chatwoot's
``identifier_hash``).

A visitor is either the tenant's logged-in user (``sub`` = that user's id, proven by the hash
the tenant's backend computed) or anonymous (``sub`` = ``visitor-`` and 32 random hex digits,
kept by the browser in its token). The gateway verifies its own tokens too (a refresh, the
socket's first frame), with the same key and claims the server checks.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from server.auth.scopes import CHAT_WEB
from webhook_bridge.tokens import SigningKey

ANONYMOUS_PREFIX = "visitor-"
#: A tenant's user id: what SendMessage takes, printable, no spaces.
USER_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
_HEX_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TOKEN_CHARS = 4096


class VisitorTokenError(Exception):
    """The token is not one of ours, not this tenant's, or expired: the reason says which."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """Who a valid visitor token names."""

    tenant_id: str
    subject: str
    expires_at: int
    token: str


def identity_valid(secret: str, user_id: str, user_hash: str) -> bool:
    """Whether ``user_hash`` is the hex HMAC-SHA256 of ``user_id`` under ``secret``."""
    if not secret or not _HEX_HASH.match(user_hash):
        return False
    expected = hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, user_hash.lower())


def anonymous_subject() -> str:
    """A fresh anonymous visitor id."""
    return ANONYMOUS_PREFIX + secrets.token_hex(16)


class VisitorTokens:
    """Mints and verifies visitor tokens."""

    def __init__(
        self,
        *,
        key: SigningKey,
        issuer: str,
        audience: str,
        lifetime_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._issuer = issuer
        self._audience = audience
        self._lifetime = lifetime_seconds
        self._clock = clock
        self._verify_key: Any = key.key
        if key.algorithm != "HS256":
            self._verify_key = load_pem_private_key(key.key.encode(), password=None).public_key()

    def mint(self, tenant_id: str, subject: str) -> Visitor:
        """A new token for ``subject`` of ``tenant_id``."""
        now = int(self._clock())
        expires = now + self._lifetime
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "tenant_id": tenant_id,
            "scope": CHAT_WEB,
            "iat": now,
            "exp": expires,
        }
        headers = {"kid": self._key.key_id} if self._key.key_id else None
        token = jwt.encode(claims, self._key.key, algorithm=self._key.algorithm, headers=headers)
        return Visitor(tenant_id=tenant_id, subject=subject, expires_at=expires, token=token)

    def verify(self, token: object, tenant_id: str) -> Visitor:
        """The visitor ``token`` names; VisitorTokenError when it is not a valid visitor
        token of ``tenant_id``."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
            raise VisitorTokenError("token missing or malformed")
        try:
            claims = jwt.decode(
                token,
                self._verify_key,
                algorithms=[self._key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub", "iss", "aud"], "verify_iat": False},
                leeway=0,
            )
        except jwt.ExpiredSignatureError:
            raise VisitorTokenError("token expired: start a new session") from None
        except (jwt.InvalidTokenError, TypeError, ValueError):
            raise VisitorTokenError("token invalid") from None
        if claims.get("scope") != CHAT_WEB or claims.get("tenant_id") != tenant_id:
            raise VisitorTokenError("not a visitor token of this tenant")
        subject, expires = claims.get("sub"), claims.get("exp")
        if not isinstance(subject, str) or not isinstance(expires, int):
            raise VisitorTokenError("token invalid")
        return Visitor(tenant_id=tenant_id, subject=subject, expires_at=expires, token=token)
