"""Rate limits per tenant, per user (the token's subject) and per method, in one Redis round
trip. When Redis cannot be reached the limiter fails open (configurable), counting and logging
(once per interval) the calls it let through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc
import structlog

from server.auth.principal import current_principal, current_tenant
from server.auth.scopes import CHAT_INGEST
from server.domain.errors import (
    QuotaViolation,
    ResourceExhausted,
    StoreError,
    StoreUnavailableError,
    Unavailable,
)
from server.domain.limits import Limit, limit_key
from server.interceptors.checks import CallerCheck
from server.metrics import Metrics
from server.services.ports import RateLimiter
from server.settings import Rate, RateLimitSettings

log = structlog.get_logger("chat.ratelimit")

#: After this many failures in a row, skip the store for RETRY_STORE_AFTER_SECONDS, so that an
#: outage does not add a timeout to every call; one slow reply alone does not trip it.
FAILURES_BEFORE_BYPASS = 3
RETRY_STORE_AFTER_SECONDS = 1.0
LOG_INTERVAL_SECONDS = 60.0


class RateLimitInterceptor(CallerCheck):
    """Refuses calls over a limit with RESOURCE_EXHAUSTED, QuotaFailure and RetryInfo."""

    def __init__(
        self,
        *,
        limiter: RateLimiter,
        settings: RateLimitSettings,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._store_down_until = 0.0
        self._consecutive_failures = 0
        self._last_logged = -LOG_INTERVAL_SECONDS
        self._let_through_since_log = 0

    async def check(
        self,
        context: grpc.aio.ServicerContext[Any, Any],  # noqa: ARG002 - the base's signature
        method_name: str,
    ) -> None:
        await self._check(method_name)

    def limits(self, method_name: str) -> tuple[Limit, ...]:
        """The limits a call of ``method_name`` by the current caller counts against."""
        tenant = current_tenant()
        principal = current_principal()
        quotas = tenant.quotas
        default = self._settings.tenant
        if quotas.requests_per_second:
            # A tenant's own rate without its own burst: about one second's worth.
            tenant_rate = Rate(
                per_second=quotas.requests_per_second,
                burst=quotas.burst or max(1, round(quotas.requests_per_second)),
            )
        else:
            tenant_rate = Rate(per_second=default.per_second, burst=quotas.burst or default.burst)
        user = self._settings.user
        limits = [
            Limit(limit_key(tenant.id, "t"), tenant_rate.per_second, tenant_rate.burst, "tenant")
        ]
        # The webhook bridge calls as one service identity per tenant, carrying every end
        # user's messages: a per-user limit on it would throttle the whole tenant's inbound.
        if CHAT_INGEST not in principal.scopes:
            limits.append(
                Limit(
                    limit_key(tenant.id, "u", principal.subject),
                    user.per_second,
                    user.burst,
                    f"user:{principal.subject}",
                )
            )
        short_name = method_name.rsplit("/", 1)[-1]
        method_rate = self._settings.methods.get(short_name)
        if method_rate is not None:
            limits.append(
                Limit(
                    limit_key(tenant.id, "m", short_name),
                    method_rate.per_second,
                    method_rate.burst,
                    f"method:{short_name}",
                )
            )
        return tuple(limits)

    async def _check(self, method_name: str) -> None:
        limits = self.limits(method_name)
        if self._clock() < self._store_down_until:
            self._unchecked(None)
            return
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the check in a task
            # of its own, a task per call for nothing.
            async with asyncio.timeout(self._settings.timeout_seconds):
                decision = await self._limiter.check(limits)
        except (StoreUnavailableError, TimeoutError) as exc:
            self._consecutive_failures += 1
            if self._consecutive_failures >= FAILURES_BEFORE_BYPASS:
                self._store_down_until = self._clock() + RETRY_STORE_AFTER_SECONDS
            self._unchecked(exc)
            return
        except StoreError as exc:
            # Redis answered with an error: a bug or misconfiguration, not an outage.
            log.exception("rate-limit script failed")
            self._unchecked(exc)
            return
        self._consecutive_failures = 0
        if decision.allowed:
            return
        for limit in decision.refused:
            self._metrics.rate_limited.labels(limit=limit.subject.split(":", 1)[0]).inc()
        raise ResourceExhausted(
            "rate limit exceeded",
            reason="RATE_LIMITED",
            retry_after_seconds=decision.retry_after_seconds,
            quota_violations=[
                QuotaViolation(
                    subject=limit.subject,
                    description=f"at most {limit.per_second:g} requests/s, bursts of {limit.burst}",
                )
                for limit in decision.refused
            ],
        )

    def _unchecked(self, error: BaseException | None) -> None:
        if not self._settings.fail_open:
            raise Unavailable("rate limiter unavailable", reason="RATE_LIMITER_UNAVAILABLE")
        self._metrics.rate_limit_fail_open.inc()
        self._let_through_since_log += 1
        now = self._clock()
        if now - self._last_logged >= LOG_INTERVAL_SECONDS:
            log.warning(
                "rate-limit store unreachable; letting calls through unchecked",
                calls_let_through=self._let_through_since_log,
                error=repr(error) if error else "store marked down",
            )
            self._last_logged = now
            self._let_through_since_log = 0
