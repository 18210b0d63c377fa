"""Continuing a call from an interceptor, the same way for unary and streaming handlers; and
the base of the interceptors that check callers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

from server.auth.scopes import PUBLIC_METHODS


async def proceed(
    method: Callable[..., Any],
    request_or_iterator: Any,
    context: grpc.aio.ServicerContext[Any, Any],
) -> Any:
    """Await a unary handler's response; hand a streaming handler's iterator back as it is."""
    response = method(request_or_iterator, context)
    if hasattr(response, "__aiter__"):
        return response
    return await response


class CallerCheck(AsyncServerInterceptor, ABC):
    """An interceptor that checks the caller of every method but the public ones (health,
    reflection), then continues the call. The guard is written here, once."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> Any:
        if method_name not in PUBLIC_METHODS:
            await self.check(context, method_name)
        return await proceed(method, request_or_iterator, context)

    @abstractmethod
    async def check(self, context: grpc.aio.ServicerContext[Any, Any], method_name: str) -> None:
        """Raise a DomainError to refuse the call."""
