"""The interceptor chain, written once. Order matters: the first listed sees a call first."""

from __future__ import annotations

from typing import Any

import grpc

from server.interceptors.request_context import RequestContextInterceptor


def build_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Request id + access log first; authentication, tenant and rate limit follow it."""
    return [
        RequestContextInterceptor(),
    ]
