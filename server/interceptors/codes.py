"""The status a call ended with, as the access log and the metrics name it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import grpc


def final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    """The code's name (``OK``, ``NOT_FOUND``...): the one a handler or the error boundary
    set, else what grpc answers for how the call ended."""
    # The stubs promise a StatusCode, but it is None until a handler sets one.
    code = cast("grpc.StatusCode | None", context.code())
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return "OK"
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    return "UNKNOWN"  # what grpc answers for an exception no boundary translated
