"""Settings of the bridge process (prefix ``CHAT_``)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from server.settings import LogFormat, Settings, SettingsError
from webhook_bridge.bodies import BODY_TIMEOUT_SECONDS
from webhook_bridge.forwarder import CALLS_AT_ONCE
from webhook_bridge.http_server import HEADER_TIMEOUT_SECONDS
from webhook_bridge.tokens import SigningKey
from webhook_bridge.web.config import WebSettings

#: A time limit longer than this is a mistake (a platform gives up within seconds).
MAX_TIMEOUT_SECONDS = 3600.0
#: More calls of one tenant in flight than this would only spread its webhooks thinner.
MAX_CALLS_AT_ONCE = 64


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """Where the bridge listens, where it forwards to, and how it signs its service tokens."""

    host: str
    port: int
    server_target: str
    log_format: LogFormat
    log_level: str
    max_body_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    calls_at_once: int
    tenants_file: Path | None
    tenant_secrets_key_file: Path | None
    mongodb_uri: str
    mongodb_database: str
    token_key: SigningKey
    token_issuer: str
    token_audience: str
    teams_metadata_url: str
    web: WebSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeSettings:
        """Read from ``environ`` (default: the process environment)."""
        env = os.environ if environ is None else environ
        shared = Settings.from_env(env)
        raw_port = env.get("CHAT_BRIDGE_PORT", "").strip() or "8080"
        try:
            port = int(raw_port)
        except ValueError:
            port = -1
        if not 0 <= port <= 65535:
            raise SettingsError(f"CHAT_BRIDGE_PORT={raw_port!r}: expected a port number")
        max_body_bytes = _whole(
            env, "CHAT_BRIDGE_MAX_BODY_BYTES", 1024 * 1024, low=1024, expected="expected bytes"
        )
        calls_at_once = _whole(
            env,
            "CHAT_BRIDGE_CALLS_AT_ONCE",
            CALLS_AT_ONCE,
            low=1,
            high=MAX_CALLS_AT_ONCE,
            expected="expected a number of calls",
        )
        return cls(
            host=env.get("CHAT_BRIDGE_HOST", "").strip() or "0.0.0.0",  # noqa: S104 - a server
            port=port,
            server_target=env.get("CHAT_SERVER_TARGET", "").strip() or "127.0.0.1:8001",
            log_format=shared.log_format,
            log_level=shared.log_level,
            max_body_bytes=max_body_bytes,
            header_timeout_seconds=_seconds(
                env, "CHAT_BRIDGE_HEADER_TIMEOUT_SECONDS", HEADER_TIMEOUT_SECONDS
            ),
            body_timeout_seconds=_seconds(
                env, "CHAT_BRIDGE_BODY_TIMEOUT_SECONDS", BODY_TIMEOUT_SECONDS
            ),
            calls_at_once=calls_at_once,
            tenants_file=shared.tenants_file,
            tenant_secrets_key_file=shared.tenant_secrets_key_file,
            mongodb_uri=shared.mongodb_uri,
            mongodb_database=shared.mongodb_database,
            token_key=_token_key(env),
            token_issuer=shared.jwt.issuer,
            token_audience=shared.jwt.audience,
            teams_metadata_url=shared.platforms.teams_openid_metadata_url,
            web=WebSettings.from_env(env),
        )


def _whole(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    low: int,
    high: int | None = None,
    expected: str,
) -> int:
    """A whole number from ``low`` to ``high`` (no upper bound when None), in ASCII digits."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() else -1
    if value < low or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"{low} to {high}"
        raise SettingsError(f"{name}={raw!r}: {expected}, {bounds}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """A time limit in seconds: more than 0, at most MAX_TIMEOUT_SECONDS."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:  # NaN fails too
        raise SettingsError(
            f"{name}={raw!r}: expected seconds, more than 0 and at most {MAX_TIMEOUT_SECONDS:g}"
        )
    return seconds


def _token_key(env: Mapping[str, str]) -> SigningKey:
    """The key the bridge signs its ``chat:ingest`` tokens with: a private key file (RS256 or
    ES256; the server must trust its public key through CHAT_JWT_JWKS_URL or
    CHAT_JWT_PUBLIC_KEY_FILE), or in development the shared HS256 secret."""
    key_file = env.get("CHAT_BRIDGE_TOKEN_KEY_FILE", "").strip()
    if key_file:
        algorithm = env.get("CHAT_BRIDGE_TOKEN_ALGORITHM", "").strip().upper() or "RS256"
        if algorithm not in ("RS256", "ES256"):
            raise SettingsError(f"CHAT_BRIDGE_TOKEN_ALGORITHM={algorithm!r}: RS256 or ES256")
        try:
            key = Path(key_file).read_text()
        except OSError as exc:
            raise SettingsError(f"CHAT_BRIDGE_TOKEN_KEY_FILE={key_file!r}: {exc}") from None
        return SigningKey(
            algorithm=algorithm, key=key, key_id=env.get("CHAT_BRIDGE_TOKEN_KEY_ID", "").strip()
        )
    secret = env.get("CHAT_JWT_SECRET", "").strip()
    if secret:
        return SigningKey(algorithm="HS256", key=secret)
    raise SettingsError(
        "the bridge needs a signing key: CHAT_BRIDGE_TOKEN_KEY_FILE (production) "
        "or CHAT_JWT_SECRET (development)"
    )
