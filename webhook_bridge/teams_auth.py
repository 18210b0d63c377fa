"""Bot Framework request authentication for Teams webhooks.

Every activity carries ``Authorization: Bearer <JWT>`` signed RS256 by Bot Framework. The
keys come from the OpenID metadata document's ``jwks_uri`` (cached a day, fetched again once
on an unknown ``kid``, at most once a minute). Checked: algorithm RS256, issuer
``https://api.botframework.com``, audience = the tenant's bot app id, expiry with 5 minutes of
clock skew, the ``serviceurl`` claim equal to the activity's ``serviceUrl``, and the signing
key endorsed for the activity's ``channelId``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

from server.auth.jwks import JwksKeySource
from server.domain.errors import Unauthenticated, Unavailable

log = structlog.get_logger("chat.bridge.teams")

ISSUER = "https://api.botframework.com"
LEEWAY_SECONDS = 300
METADATA_REFRESH_SECONDS = 86400.0
METADATA_RETRY_SECONDS = 60.0
MAX_TOKEN_BYTES = 8192


class TeamsAuthError(Exception):
    """The request is not from Bot Framework (401) or not for this bot (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A valid Bot Framework token, still to be matched with the activity it came with."""

    claims: dict[str, Any]
    endorsements: tuple[str, ...]

    def check(self, *, service_url: str, channel_id: str) -> None:
        """The ``serviceurl`` claim must be the activity's, and the key endorsed for its
        channel; TeamsAuthError (403) when not."""
        if self.claims.get("serviceurl") != service_url:
            raise TeamsAuthError(403, "serviceurl claim does not match the activity")
        # A key without endorsements signs for no channel (as Bot Framework's SDKs hold).
        if channel_id not in self.endorsements:
            raise TeamsAuthError(403, f"key not endorsed for channel {channel_id[:40]!r}")


class BotFrameworkVerifier:
    """Verifies the bearer token of Teams activities."""

    def __init__(self, *, metadata_url: str, http: aiohttp.ClientSession) -> None:
        self._metadata_url = metadata_url
        self._http = http
        self._keys: JwksKeySource | None = None
        self._jwks_uri = ""
        self._fetched_at = 0.0
        #: After a failed metadata fetch, the next one waits until then.
        self._retry_at = 0.0
        self._lock = asyncio.Lock()

    async def authenticate(self, authorization: str | None, *, app_id: str) -> VerifiedToken:
        """Check the token itself (before the body is parsed): signature, issuer, audience
        = ``app_id``, expiry. TeamsAuthError when it fails; Unavailable when the keys
        cannot be fetched (the platform should retry)."""
        if not authorization or not authorization.startswith("Bearer "):
            raise TeamsAuthError(401, "no bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        if len(token) > MAX_TOKEN_BYTES:
            raise TeamsAuthError(401, "token too large")
        if not token.isascii():  # a JWT is base64url and dots; aiohttp keeps other bytes as-is
            raise TeamsAuthError(401, "malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TeamsAuthError(401, "malformed token") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str) or not kid:
            raise TeamsAuthError(401, "token must be RS256 with a kid")
        keys = await self._key_source()
        try:
            key = await keys.key(kid)
        except Unauthenticated:
            raise TeamsAuthError(401, "token signed with an unknown key") from None
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                audience=app_id,
                issuer=ISSUER,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidAudienceError:
            raise TeamsAuthError(403, "token is for another bot") from None
        except jwt.InvalidTokenError as exc:
            raise TeamsAuthError(401, f"invalid token ({type(exc).__name__})") from None
        return VerifiedToken(claims=claims, endorsements=key.endorsements)

    async def _key_source(self) -> JwksKeySource:
        if self._keys is not None and not self._metadata_stale():
            return self._keys
        if self._keys is None and time.monotonic() < self._retry_at:
            raise Unavailable("cannot verify Teams requests right now", reason="KEYS_UNAVAILABLE")
        async with self._lock:
            if (
                self._keys is None and time.monotonic() >= self._retry_at
            ) or self._metadata_stale():
                try:
                    jwks_uri = await self._read_jwks_uri()
                except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                    log.warning("cannot read the Bot Framework metadata", error=repr(exc))
                    # Not again for a minute: requests must not queue behind a hanging host.
                    self._retry_at = time.monotonic() + METADATA_RETRY_SECONDS
                    if self._keys is None:
                        raise Unavailable(
                            "cannot verify Teams requests right now", reason="KEYS_UNAVAILABLE"
                        ) from None
                    return self._keys
                if jwks_uri != self._jwks_uri or self._keys is None:
                    self._keys = JwksKeySource(
                        url=jwks_uri, http=self._http, refresh_seconds=METADATA_REFRESH_SECONDS
                    )
                    self._jwks_uri = jwks_uri
                self._fetched_at = time.monotonic()
            if self._keys is None:  # another request's fetch failed while this one waited
                raise Unavailable(
                    "cannot verify Teams requests right now", reason="KEYS_UNAVAILABLE"
                )
            return self._keys

    def _metadata_stale(self) -> bool:
        now = time.monotonic()
        return now - self._fetched_at >= METADATA_REFRESH_SECONDS and now >= self._retry_at

    async def _read_jwks_uri(self) -> str:
        async with self._http.get(
            self._metadata_url, timeout=aiohttp.ClientTimeout(total=5)
        ) as response:
            response.raise_for_status()
            document = await response.json(content_type=None)
        jwks_uri = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError("the OpenID metadata has no jwks_uri")
        return jwks_uri
