"""Typed settings read from the environment (prefix ``CHAT_``); docs/settings.md lists each one."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

LogFormat = Literal["auto", "json", "console"]
_LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_KNOWN_JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "HS256")

T = TypeVar("T")


#: More would only add connections: the processes share the machine's cores.
MAX_WORKERS = 64
#: CHAT_SHUTDOWN_GRACE_SECONDS unset.
DEFAULT_SHUTDOWN_GRACE_SECONDS = "10"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How bearer tokens are verified (used by the authentication interceptor)."""

    algorithms: tuple[str, ...]
    jwks_url: str | None
    public_key_file: Path | None
    secret: str | None
    issuer: str
    audience: str
    leeway_seconds: int


@dataclass(frozen=True, slots=True)
class PlatformEndpoints:
    """Base URLs of the platforms' APIs, configurable so tests can use a local stand-in."""

    whatsapp_api_base: str
    messenger_api_base: str
    graph_api_version: str
    slack_api_base: str
    teams_openid_metadata_url: str
    teams_token_url: str


@dataclass(frozen=True, slots=True)
class Rate:
    """A sustained rate with a burst allowance."""

    per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Default limits; a tenant's quotas in the tenants file replace the tenant default."""

    tenant: Rate
    user: Rate
    #: Per tenant and method, for methods heavier than the rest (short method name -> rate).
    methods: dict[str, Rate]
    fail_open: bool
    timeout_seconds: float


@dataclass(frozen=True, slots=True)
class AlertSettings:
    """Thresholds, the window they are measured over, and where alerts go."""

    webhook_url: str | None = None
    interval_seconds: float = 900
    window_minutes: int = 5
    #: Failed / (failed + succeeded) deliveries of a tenant within the window.
    delivery_failure_rate: float = 0.2
    #: Fewer outcomes than this in the window are too few to judge a rate by.
    delivery_min_outcomes: int = 20
    #: Dead letters of a tenant within the window.
    dead_letters: int = 10
    #: Events not yet handled, summed over every partition.
    consumer_lag: int = 10_000


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """The event worker (chat-worker): its consumer group, retries, metrics and alerts."""

    group_id: str
    session_timeout_seconds: float
    metrics_address: str | None
    retry_attempts: int
    retry_base_delay_seconds: float
    alerts: AlertSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the chat server and worker read from the environment."""

    grpc_address: str
    #: Server processes sharing the gRPC port (CHAT_WORKERS; see server/workers.py).
    workers: int
    mongodb_uri: str
    mongodb_database: str
    redis_url: str
    #: CHAT_REDIS_URL names one node of a Redis Cluster (the client discovers the rest);
    #: docs/scale-out.md says which keys share a slot and why.
    redis_cluster: bool
    #: One Redis call's deadline (connect, or wait for the answer): a stalled Redis must not
    #: hold the calls that need it (see server/clients.py).
    redis_timeout_seconds: float
    #: Connections to each Redis server, at most: a call beyond them waits for a free one
    #: (one server: up to the call's deadline; a cluster's nodes refuse at once).
    redis_max_connections: int
    kafka_bootstrap: str
    tenants_file: Path | None
    tenant_secrets_key_file: Path | None
    log_format: LogFormat
    log_level: str
    shutdown_grace_seconds: float
    health_check_interval_seconds: float
    metrics_address: str | None
    session_ttl_seconds: int
    session_sweep_seconds: float
    phone_default_region: str
    responder_target: str | None
    responder_timeout_seconds: float
    media_fetch_timeout_seconds: float
    media_fetch_allow_private: bool
    stream_queue_limit: int
    delivery_max_attempts: int
    delivery_base_delay_seconds: float
    delivery_lease_seconds: float
    #: One platform HTTP call's deadline; a send that times out is retried.
    delivery_send_timeout_seconds: float
    #: Transient failures in a row (per tenant and channel) that open the circuit breaker,
    #: and how long it stays open before one probe goes through.
    delivery_breaker_threshold: int
    delivery_breaker_open_seconds: float
    jwt: JwtSettings
    rate_limits: RateLimitSettings
    platforms: PlatformEndpoints
    worker: WorkerSettings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default: the process environment)."""
        env = _Env(os.environ if environ is None else environ)
        secret = env.optional("CHAT_JWT_SECRET")
        key_file = env.optional("CHAT_JWT_PUBLIC_KEY_FILE")
        jwks_url = env.optional("CHAT_JWT_JWKS_URL")
        jwt = JwtSettings(
            algorithms=_jwt_algorithms(env, has_keys=bool(jwks_url or key_file)),
            jwks_url=jwks_url,
            public_key_file=Path(key_file) if key_file else None,
            secret=secret,
            issuer=env.get("CHAT_JWT_ISSUER", "chat-service"),
            audience=env.get("CHAT_JWT_AUDIENCE", "chat-service"),
            leeway_seconds=env.parse("CHAT_JWT_LEEWAY_SECONDS", "30", _non_negative_int),
        )
        grpc_address = env.get("CHAT_GRPC_ADDRESS", "0.0.0.0:8001")
        workers = env.parse("CHAT_WORKERS", "1", _worker_count)
        if workers > 1 and grpc_address.rpartition(":")[2] == "0":
            raise SettingsError(
                "CHAT_WORKERS: several workers share one port; CHAT_GRPC_ADDRESS must name it"
            )
        tenants_file = env.optional("CHAT_TENANTS_FILE")
        secrets_key_file = env.optional("CHAT_TENANT_SECRETS_KEY_FILE")
        return cls(
            grpc_address=grpc_address,
            workers=workers,
            mongodb_uri=env.get("CHAT_MONGODB_URI", "mongodb://127.0.0.1:27017"),
            mongodb_database=env.get("CHAT_MONGODB_DATABASE", "chat"),
            redis_url=env.get("CHAT_REDIS_URL", "redis://127.0.0.1:6379/0"),
            redis_cluster=env.parse("CHAT_REDIS_CLUSTER", "false", _boolean),
            redis_timeout_seconds=env.parse("CHAT_REDIS_TIMEOUT_MS", "500", _positive_float) / 1000,
            redis_max_connections=env.parse("CHAT_REDIS_MAX_CONNECTIONS", "256", _positive_int),
            kafka_bootstrap=env.get("CHAT_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            tenants_file=Path(tenants_file) if tenants_file else None,
            tenant_secrets_key_file=Path(secrets_key_file) if secrets_key_file else None,
            log_format=env.choice("CHAT_LOG_FORMAT", "auto", _LOG_FORMATS),
            log_level=env.choice("CHAT_LOG_LEVEL", "info", _LOG_LEVELS),
            shutdown_grace_seconds=env.parse(
                "CHAT_SHUTDOWN_GRACE_SECONDS", DEFAULT_SHUTDOWN_GRACE_SECONDS, _positive_float
            ),
            health_check_interval_seconds=env.parse(
                "CHAT_HEALTH_CHECK_INTERVAL_SECONDS", "5", _positive_float
            ),
            metrics_address=_optional_address(env.get("CHAT_METRICS_ADDRESS", "0.0.0.0:9464")),
            session_ttl_seconds=env.parse("CHAT_SESSION_TTL_SECONDS", "1800", _positive_int),
            session_sweep_seconds=env.parse("CHAT_SESSION_SWEEP_SECONDS", "5", _positive_float),
            phone_default_region=env.get("CHAT_PHONE_DEFAULT_REGION", "").upper(),
            responder_target=env.optional("CHAT_RESPONDER_TARGET"),
            responder_timeout_seconds=env.parse(
                "CHAT_RESPONDER_TIMEOUT_MS", "2000", _positive_float
            )
            / 1000,
            media_fetch_timeout_seconds=env.parse(
                "CHAT_MEDIA_FETCH_TIMEOUT_MS", "10000", _positive_float
            )
            / 1000,
            media_fetch_allow_private=env.parse(
                "CHAT_MEDIA_FETCH_ALLOW_PRIVATE", "false", _boolean
            ),
            stream_queue_limit=env.parse("CHAT_STREAM_QUEUE_LIMIT", "256", _positive_int),
            delivery_max_attempts=env.parse("CHAT_DELIVERY_MAX_ATTEMPTS", "6", _positive_int),
            delivery_base_delay_seconds=env.parse(
                "CHAT_DELIVERY_BASE_DELAY_MS", "1000", _positive_float
            )
            / 1000,
            delivery_lease_seconds=env.parse("CHAT_DELIVERY_LEASE_SECONDS", "300", _positive_float),
            delivery_send_timeout_seconds=env.parse(
                "CHAT_DELIVERY_SEND_TIMEOUT_MS", "10000", _positive_float
            )
            / 1000,
            delivery_breaker_threshold=env.parse(
                "CHAT_DELIVERY_BREAKER_THRESHOLD", "5", _positive_int
            ),
            delivery_breaker_open_seconds=env.parse(
                "CHAT_DELIVERY_BREAKER_OPEN_MS", "30000", _positive_float
            )
            / 1000,
            jwt=jwt,
            rate_limits=RateLimitSettings(
                tenant=Rate(
                    per_second=env.parse("CHAT_RATE_LIMIT_TENANT_RPS", "100", _positive_float),
                    burst=env.parse("CHAT_RATE_LIMIT_TENANT_BURST", "200", _positive_int),
                ),
                user=Rate(
                    per_second=env.parse("CHAT_RATE_LIMIT_USER_RPS", "20", _positive_float),
                    burst=env.parse("CHAT_RATE_LIMIT_USER_BURST", "40", _positive_int),
                ),
                methods=env.parse(
                    "CHAT_RATE_LIMIT_METHODS",
                    "ExportConversation=1:5,SearchMessages=10:20",
                    _method_rates,
                ),
                fail_open=env.parse("CHAT_RATE_LIMIT_FAIL_OPEN", "true", _boolean),
                timeout_seconds=env.parse("CHAT_RATE_LIMIT_TIMEOUT_MS", "250", _positive_float)
                / 1000,
            ),
            platforms=PlatformEndpoints(
                whatsapp_api_base=env.get("CHAT_WHATSAPP_API_BASE", "https://graph.facebook.com"),
                messenger_api_base=env.get("CHAT_MESSENGER_API_BASE", "https://graph.facebook.com"),
                graph_api_version=env.get("CHAT_GRAPH_API_VERSION", "v23.0"),
                slack_api_base=env.get("CHAT_SLACK_API_BASE", "https://slack.com"),
                teams_openid_metadata_url=env.get(
                    "CHAT_TEAMS_OPENID_METADATA_URL",
                    "https://login.botframework.com/v1/.well-known/openidconfiguration",
                ),
                teams_token_url=env.get(
                    "CHAT_TEAMS_TOKEN_URL",
                    "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token",
                ),
            ),
            worker=WorkerSettings(
                group_id=env.get("CHAT_WORKER_GROUP", "chat-worker"),
                session_timeout_seconds=env.parse(
                    "CHAT_WORKER_SESSION_TIMEOUT_MS", "10000", _positive_float
                )
                / 1000,
                metrics_address=_optional_address(
                    env.get("CHAT_WORKER_METRICS_ADDRESS", "0.0.0.0:9465")
                ),
                retry_attempts=env.parse("CHAT_WORKER_RETRY_ATTEMPTS", "5", _positive_int),
                retry_base_delay_seconds=env.parse(
                    "CHAT_WORKER_RETRY_BASE_DELAY_MS", "200", _positive_float
                )
                / 1000,
                alerts=AlertSettings(
                    webhook_url=env.optional("CHAT_ALERT_WEBHOOK_URL"),
                    interval_seconds=env.parse(
                        "CHAT_ALERT_INTERVAL_SECONDS", "900", _positive_float
                    ),
                    window_minutes=env.parse("CHAT_ALERT_WINDOW_MINUTES", "5", _positive_int),
                    delivery_failure_rate=env.parse(
                        "CHAT_ALERT_DELIVERY_FAILURE_RATE", "0.2", _fraction
                    ),
                    delivery_min_outcomes=env.parse(
                        "CHAT_ALERT_DELIVERY_MIN_OUTCOMES", "20", _positive_int
                    ),
                    dead_letters=env.parse("CHAT_ALERT_DEAD_LETTERS", "10", _positive_int),
                    consumer_lag=env.parse("CHAT_ALERT_CONSUMER_LAG", "10000", _positive_int),
                ),
            ),
        )


class _Env:
    """Reads one variable at a time and names it in every error."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def optional(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def get(self, name: str, default: str) -> str:
        return self.optional(name) or default

    def parse(self, name: str, default: str, parse: Callable[[str], T]) -> T:
        raw = self.get(name, default)
        try:
            return parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r}: {exc}") from None

    def choice(self, name: str, default: str, allowed: tuple[T, ...]) -> T:
        raw = self.get(name, default).lower()
        for option in allowed:
            if option == raw:
                return option
        raise SettingsError(f"{name}={raw!r}: expected one of {', '.join(map(str, allowed))}")


def _jwt_algorithms(env: _Env, *, has_keys: bool) -> tuple[str, ...]:
    # HS256 shares one secret between every token issuer and this server, so it is a
    # development convenience: it is only on when asked for, or when no key source exists.
    default = "RS256,ES256" if has_keys or not env.optional("CHAT_JWT_SECRET") else "HS256"
    raw = env.get("CHAT_JWT_ALGORITHMS", default)
    algorithms = tuple(part.strip().upper() for part in raw.split(",") if part.strip())
    unknown = [alg for alg in algorithms if alg not in _KNOWN_JWT_ALGORITHMS]
    if not algorithms or unknown:
        raise SettingsError(
            f"CHAT_JWT_ALGORITHMS={raw!r}: expected a comma-separated list of "
            f"{', '.join(_KNOWN_JWT_ALGORITHMS)}"
        )
    if "HS256" in algorithms and not env.optional("CHAT_JWT_SECRET"):
        raise SettingsError("CHAT_JWT_ALGORITHMS lists HS256 but CHAT_JWT_SECRET is not set")
    return algorithms


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must not be negative")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be positive")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _worker_count(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= MAX_WORKERS:
        raise ValueError(f"expected 1 to {MAX_WORKERS} processes")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError("expected a number in (0, 1]")
    return value


def _boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _optional_address(raw: str) -> str | None:
    return None if raw.lower() in ("off", "none", "") else raw


def _method_rates(raw: str) -> dict[str, Rate]:
    rates: dict[str, Rate] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        name, _, spec = item.partition("=")
        per_second, _, burst = spec.partition(":")
        if not name.isidentifier() or not per_second or not burst:
            raise ValueError(f"expected Method=rate:burst items, got {item!r}")
        rates[name] = Rate(per_second=_positive_float(per_second), burst=_positive_int(burst))
    return rates
