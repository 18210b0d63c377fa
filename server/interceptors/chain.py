"""The interceptor chain, written once. Order matters: the first listed sees a call first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from server.auth.tokens import TokenVerifier
from server.domain.tenant import TenantCatalog
from server.interceptors.auth import AuthInterceptor
from server.interceptors.decoding import DecodingInterceptor
from server.interceptors.error_boundary import ErrorBoundaryInterceptor
from server.interceptors.rate_limit import RateLimitInterceptor
from server.interceptors.request_context import RequestContextInterceptor
from server.interceptors.tenant import TenantInterceptor
from server.metrics import Metrics
from server.services.ports import RateLimiter
from server.settings import RateLimitSettings


@dataclass(frozen=True, slots=True)
class ChainDependencies:
    """What the interceptors need."""

    verifier: TokenVerifier
    tenants: TenantCatalog
    limiter: RateLimiter
    rate_limits: RateLimitSettings
    metrics: Metrics
    required_scopes: Mapping[str, str]
    #: Whether an exception says a store is down (answered UNAVAILABLE, not INTERNAL).
    is_outage: Callable[[Exception], bool] = lambda _exc: False


def build_interceptors(deps: ChainDependencies) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Request id + logging, then authentication, tenant and rate limit.

    The decoding interceptor comes first only because grpc decodes a request before any
    interceptor runs: it swaps the decoder for one that never raises (interceptors/decoding.py),
    and the error boundary answers what that could not decode. The error boundary sits right
    inside the request-id interceptor: around everything else (interceptors and servicers
    alike), and inside the request id so that an INTERNAL error can quote it and the access line
    records the final status.
    """
    return [
        DecodingInterceptor(),
        RequestContextInterceptor(),
        ErrorBoundaryInterceptor(metrics=deps.metrics, is_outage=deps.is_outage),
        AuthInterceptor(
            verifier=deps.verifier, required_scopes=deps.required_scopes, metrics=deps.metrics
        ),
        TenantInterceptor(directory=deps.tenants),
        RateLimitInterceptor(limiter=deps.limiter, settings=deps.rate_limits, metrics=deps.metrics),
    ]
