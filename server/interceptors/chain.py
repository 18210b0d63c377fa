"""The interceptor chain, written once. Order matters: the first listed sees a call first."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from server.auth.tokens import TokenVerifier
from server.domain.tenant import TenantCatalog
from server.interceptors.auth import AuthInterceptor
from server.interceptors.call_chain import CallChain
from server.interceptors.error_boundary import ErrorBoundaryInterceptor
from server.interceptors.rate_limit import RateLimitInterceptor
from server.interceptors.request_context import RequestContextInterceptor
from server.interceptors.rpc_metrics import RpcMetrics
from server.interceptors.tenant import TenantInterceptor
from server.metrics import Metrics
from server.services.ports import RateLimiter
from server.settings import RateLimitSettings
from server.tracing.spans import server_interceptors


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
    """Request id + logging, then the error boundary, then authentication, tenant and rate
    limit, then the servicer; all of them run by one interceptor (call_chain.py).

    The error boundary sits right inside the request id: around everything else (the checks
    and the servicers alike), and inside the request id so that an INTERNAL error can quote it
    and the access line records the final status (and the RPC metrics, reported by the
    request-id step, the code the caller gets). The same interceptor gives each method a
    decoder that never raises (interceptors/decoding.py), since grpc decodes a request before
    any interceptor runs; the error boundary answers what it could not decode. The tracing
    interceptor (only while tracing is on) comes before it, so the access line and everything
    within the call carry the call's span.
    """
    return [
        *server_interceptors(),
        CallChain(
            request_context=RequestContextInterceptor(rpc_metrics=RpcMetrics(metrics=deps.metrics)),
            error_boundary=ErrorBoundaryInterceptor(metrics=deps.metrics, is_outage=deps.is_outage),
            checks=(
                AuthInterceptor(
                    verifier=deps.verifier,
                    required_scopes=deps.required_scopes,
                    metrics=deps.metrics,
                ),
                TenantInterceptor(directory=deps.tenants),
                RateLimitInterceptor(
                    limiter=deps.limiter, settings=deps.rate_limits, metrics=deps.metrics
                ),
            ),
        ),
    ]
