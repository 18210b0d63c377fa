"""Continuing a call from an interceptor, the same way for unary and streaming handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


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
