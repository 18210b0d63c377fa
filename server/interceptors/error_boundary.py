"""The one place where exceptions become gRPC statuses.

Domain errors become ``google.rpc.Status`` with ErrorInfo (reason, domain) and, where they
apply, BadRequest field violations, QuotaFailure and RetryInfo (with ``retry-after`` in the
trailing metadata too). Anything else becomes INTERNAL with a generic message quoting the
request id; the exception itself goes only to the log.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, NoReturn

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_interceptor.server import AsyncServerInterceptor

from server.domain.errors import (
    ERROR_DOMAIN,
    DomainError,
    InvalidArgument,
    ResourceExhausted,
)
from server.interceptors.request_context import send_headers

STATUS_DETAILS_KEY = "grpc-status-details-bin"
log = structlog.get_logger("chat.errors")


class ErrorBoundaryInterceptor(AsyncServerInterceptor):
    """Translates exceptions raised below it (interceptors and servicers)."""

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        _method_name: str,
    ) -> Any:
        try:
            response = method(request_or_iterator, context)
            if hasattr(response, "__aiter__"):
                return self._stream(response, context)
            return await response
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            await abort_with(context, exc)

    async def _stream(
        self, responses: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            await abort_with(context, exc)


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    """End the call with the status ``exc`` stands for."""
    if isinstance(exc, grpc.aio.BaseError | asyncio.CancelledError):
        # grpc's own: already a status (AbortError), the client gone mid-write
        # (ExecuteBatchError), or the server stopping. grpc ends the call itself, quietly
        # when the client has left; as INTERNAL with a traceback they would drown the log.
        raise exc
    if not isinstance(exc, DomainError):
        request_id = structlog.contextvars.get_contextvars().get("request_id", "")
        log.error("unexpected error", exc_info=exc)
        exc = DomainError(
            f"internal error; quote request id {request_id} when reporting it",
            metadata={"request_id": request_id},
        )
    status, trailing = to_status(exc)
    await send_headers(context)  # a call that defers its headers still gets its request id
    await context.abort(
        exc.code,
        exc.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()), *trailing),
    )


def to_status(error: DomainError) -> tuple[status_pb2.Status, tuple[tuple[str, str], ...]]:
    """The rich status for ``error``, and any extra trailing metadata."""
    details = [
        error_details_pb2.ErrorInfo(
            reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
        )
    ]
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, InvalidArgument) and error.field_violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.field_violations
                ]
            )
        )
    if isinstance(error, ResourceExhausted):
        if error.quota_violations:
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(error.retry_after_seconds * 1e9)))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        trailing = (("retry-after", str(max(1, math.ceil(error.retry_after_seconds)))),)
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return (
        status_pb2.Status(code=error.code.value[0], message=error.message, details=packed),
        trailing,
    )
