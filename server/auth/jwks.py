"""Signing keys from a JWKS URL: cached, refreshed on an interval, and re-fetched when a token
names an unknown ``kid`` (at most once a minute, so forged kids cannot hammer the IdP)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

from server.domain.errors import Unauthenticated, Unavailable

log = structlog.get_logger("chat.auth")

#: After a failed fetch with no keys cached, requests fail at once for this long.
FAIL_FAST_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A verification key and the algorithm its JWK declares (None when it declares none)."""

    kid: str
    key: Any
    algorithm: str | None
    #: Bot Framework keys name the channels they may sign for ("msteams", ...).
    endorsements: tuple[str, ...] = ()


class JwksKeySource:
    """kid -> key, from one JWKS URL."""

    def __init__(
        self,
        *,
        url: str,
        http: aiohttp.ClientSession,
        refresh_seconds: float = 600.0,
        unknown_kid_refetch_seconds: float = 60.0,
        timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._http = http
        self._refresh = refresh_seconds
        self._refetch = unknown_kid_refetch_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    async def key(self, kid: str) -> SigningKey:
        """The key named ``kid``; UNAUTHENTICATED when the IdP does not know it."""
        if self._fetched_at is None or self._clock() - self._fetched_at >= self._refresh:
            await self._fetch(min_age=0.0 if self._fetched_at is None else self._refresh)
        key = self._keys.get(kid)
        if key is None:
            await self._fetch(min_age=self._refetch)
            key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("token signed with an unknown key", reason="TOKEN_KEY_UNKNOWN")
        return key

    async def _fetch(self, *, min_age: float) -> None:
        async with self._lock:
            # Another call may have fetched while this one waited for the lock.
            if self._fetched_at is not None and self._clock() - self._fetched_at < min_age:
                return
            if (
                not self._keys
                and self._failed_at is not None
                and self._clock() - self._failed_at < FAIL_FAST_SECONDS
            ):
                # The IdP just failed: answer at once rather than queue up for its timeout.
                raise Unavailable(
                    "cannot verify tokens right now", reason="SIGNING_KEYS_UNAVAILABLE"
                )
            try:
                async with self._http.get(self._url, timeout=self._timeout) as response:
                    response.raise_for_status()
                    document = await response.json(content_type=None)
                keys = _usable_keys(document)
            except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as exc:
                log.warning("cannot fetch signing keys", url=self._url, error=repr(exc))
                self._failed_at = self._clock()
                if not self._keys:
                    raise Unavailable(
                        "cannot verify tokens right now", reason="SIGNING_KEYS_UNAVAILABLE"
                    ) from None
                # Keep serving with the keys we have; try again after min_age.
                self._fetched_at = self._clock()
                return
            self.fetch_count += 1
            self._keys = keys
            self._fetched_at = self._clock()


def _usable_keys(document: object) -> dict[str, SigningKey]:
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")  # noqa: TRY004 - bad data from the IdP, not a bug
    keys: dict[str, SigningKey] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict) or not raw.get("kid") or raw.get("use", "sig") != "sig":
            continue
        try:
            declared = raw.get("alg")
            endorsed = raw.get("endorsements")
            keys[str(raw["kid"])] = SigningKey(
                kid=str(raw["kid"]),
                key=jwt.PyJWK(raw).key,
                algorithm=declared if isinstance(declared, str) else None,
                endorsements=tuple(e for e in endorsed if isinstance(e, str))
                if isinstance(endorsed, list)
                else (),
            )
        except (jwt.PyJWKError, jwt.InvalidKeyError):
            continue  # a key type we cannot use (for example an encryption key)
    return keys
