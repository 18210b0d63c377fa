"""Bearer-token verification with PyJWT against an allow-list of algorithms.

RS256/ES256 keys come from a JWKS URL or a PEM file; HS256 uses a shared secret and is only on
when configured. ``iss``, ``aud``, ``exp``, ``sub`` and ``tenant_id`` are required. Every
rejection is UNAUTHENTICATED with an ErrorInfo reason; the token itself is never echoed.

A client sends the same token with every call, so a verified token is remembered (at most
VERIFIED_CAPACITY of them): a call with it again skips the signature and claims checks, as
long as the token has not expired and the key that verified it is still the one its header
names (a key the IdP has withdrawn fails as it would have the first time).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from server.auth.jwks import JwksKeySource
from server.auth.principal import Principal
from server.domain.errors import Unauthenticated
from server.settings import JwtSettings, SettingsError

MAX_TOKEN_BYTES = 8 * 1024
VERIFIED_CAPACITY = 4096  # tokens are at most MAX_TOKEN_BYTES: at most 32 MiB
# base64url and the few punctuation marks IdPs use; no path, quote or template characters.
_VALID_KID = re.compile(r"^[A-Za-z0-9._~+=-]{1,128}$")
_REQUIRED = ["exp", "iss", "aud", "sub"]
_KEY_TYPES: dict[str, type] = {"RS": RSAPublicKey, "ES": EllipticCurvePublicKey}

_REJECTIONS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "TOKEN_EXPIRED", "token expired"),
    (jwt.ImmatureSignatureError, "TOKEN_NOT_YET_VALID", "token not yet valid"),
    (jwt.InvalidAudienceError, "TOKEN_AUDIENCE_INVALID", "token audience not accepted"),
    (jwt.InvalidIssuerError, "TOKEN_ISSUER_INVALID", "token issuer not accepted"),
    (jwt.MissingRequiredClaimError, "TOKEN_CLAIM_MISSING", "token lacks a required claim"),
    (jwt.InvalidSignatureError, "TOKEN_SIGNATURE_INVALID", "token signature invalid"),
    (jwt.InvalidKeyError, "TOKEN_SIGNATURE_INVALID", "token signature invalid"),
    (jwt.InvalidAlgorithmError, "TOKEN_ALGORITHM_NOT_ALLOWED", "token algorithm not allowed"),
    (jwt.DecodeError, "TOKEN_MALFORMED", "token malformed"),
    (jwt.InvalidTokenError, "TOKEN_INVALID", "token invalid"),
)


def load_public_key(path: Path) -> RSAPublicKey | EllipticCurvePublicKey:
    """Read CHAT_JWT_PUBLIC_KEY_FILE; only RSA and EC keys can verify our algorithms."""
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"CHAT_JWT_PUBLIC_KEY_FILE={path}: not a PEM public key ({exc})"
        ) from None
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey):
        raise SettingsError(f"CHAT_JWT_PUBLIC_KEY_FILE={path}: must be an RSA or EC public key")
    return key


#: 9999-12-31T23:59:59Z: the last expiry a datetime (and a Timestamp) can hold.
MAX_EXPIRY = 253_402_300_799


class TokenVerifier:
    """Turns a bearer token into a Principal, or raises Unauthenticated."""

    def __init__(
        self,
        *,
        settings: JwtSettings,
        jwks: JwksKeySource | None = None,
        public_key: RSAPublicKey | EllipticCurvePublicKey | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._allowed = frozenset(settings.algorithms)
        self._jwks = jwks
        self._public_key = public_key
        self._clock = clock
        # token -> (who, the header's algorithm and kid, the key that verified it)
        self._verified: dict[str, tuple[Principal, str, object, Any]] = {}

    async def verify(self, token: str) -> Principal:
        """Verify signature and claims; return who is calling."""
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("token too large", reason="TOKEN_TOO_LARGE")
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, algorithm, kid, key = remembered
            try:
                current = await self._key(algorithm, kid)
            except Exception:
                self._verified.pop(token, None)  # the key is gone, or cannot be fetched
                raise
            # PyJWT rejects a token from exp + leeway on; then the full check says why.
            expired = self._clock() >= principal.expires_at + self._settings.leeway_seconds
            if current is key and not expired:
                return principal
            self._verified.pop(token, None)
        principal, algorithm, kid, key = await self._verify(token)
        if len(self._verified) >= VERIFIED_CAPACITY:
            self._verified.pop(next(iter(self._verified)), None)  # the oldest
        self._verified[token] = (principal, algorithm, kid, key)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, str, object, Any]:
        """The full check: the principal, the header's algorithm and kid, and the key."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("token malformed", reason="TOKEN_MALFORMED") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._allowed:
            raise Unauthenticated(
                "token algorithm not allowed", reason="TOKEN_ALGORITHM_NOT_ALLOWED"
            )
        key = await self._key(algorithm, header.get("kid"))
        if not algorithm.startswith("HS") and not isinstance(key, _KEY_TYPES[algorithm[:2]]):
            # A kid naming an EC key under an RS* header (or the reverse) is a forgery attempt.
            raise Unauthenticated("token signature invalid", reason="TOKEN_SIGNATURE_INVALID")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": _REQUIRED},
            )
        except (TypeError, ValueError):
            # PyJWT reports some key/algorithm mismatches this way rather than as token errors.
            raise Unauthenticated(
                "token signature invalid", reason="TOKEN_SIGNATURE_INVALID"
            ) from None
        except jwt.InvalidTokenError as exc:
            for kind, reason, message in _REJECTIONS:
                if isinstance(exc, kind):
                    raise Unauthenticated(message, reason=reason) from None
            raise  # unreachable: InvalidTokenError is the last entry
        return _principal(claims), algorithm, header.get("kid"), key

    async def _key(self, algorithm: str, kid: object) -> Any:
        if algorithm.startswith("HS"):
            return self._settings.secret  # allowed only when a secret is configured
        if kid is not None and (not isinstance(kid, str) or not _VALID_KID.match(kid)):
            raise Unauthenticated("token key id malformed", reason="TOKEN_KID_INVALID")
        if self._jwks is not None:
            if kid is None:
                raise Unauthenticated("token names no key", reason="TOKEN_KEY_UNKNOWN")
            signing_key = await self._jwks.key(kid)
            if signing_key.algorithm not in (None, algorithm):
                raise Unauthenticated("token signature invalid", reason="TOKEN_SIGNATURE_INVALID")
            return signing_key.key
        if self._public_key is not None:
            return self._public_key
        raise Unauthenticated("no key configured for this algorithm", reason="TOKEN_KEY_UNKNOWN")


def _principal(claims: dict[str, Any]) -> Principal:
    tenant_id = claims.get("tenant_id")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise Unauthenticated(
            "token lacks a required claim",
            reason="TOKEN_CLAIM_MISSING",
            metadata={"claim": "tenant_id"},
        )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated(
            "token lacks a required claim", reason="TOKEN_CLAIM_MISSING", metadata={"claim": "sub"}
        )
    raw_scope = claims.get("scope", "")
    if isinstance(raw_scope, str):
        scopes = frozenset(raw_scope.split())
    elif isinstance(raw_scope, list) and all(isinstance(s, str) for s in raw_scope):
        scopes = frozenset(raw_scope)
    else:
        raise Unauthenticated("token scope claim malformed", reason="TOKEN_MALFORMED")
    expires = claims["exp"]  # PyJWT checked it is an integer in the future
    if not isinstance(expires, int | float) or not expires <= MAX_EXPIRY:
        # Past year 9999 no time type holds it: streams cut at expiry would overflow.
        raise Unauthenticated("token expiry out of range", reason="TOKEN_MALFORMED")
    return Principal(subject=subject, tenant_id=tenant_id, scopes=scopes, expires_at=float(expires))


def build_verifier(settings: JwtSettings, http: aiohttp.ClientSession) -> TokenVerifier:
    """The token verifier for the configured key source."""
    return TokenVerifier(
        settings=settings,
        jwks=JwksKeySource(url=settings.jwks_url, http=http) if settings.jwks_url else None,
        public_key=load_public_key(settings.public_key_file) if settings.public_key_file else None,
    )
