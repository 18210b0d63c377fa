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

from server.domain.errors import (
    ERROR_DOMAIN,
    DomainError,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from server.interceptors.decoding import Undecodable, malformed
from server.interceptors.request_context import send_headers
from server.metrics import Metrics

STATUS_DETAILS_KEY = "grpc-status-details-bin"
log = structlog.get_logger("chat.errors")


class ErrorBoundaryInterceptor:
    """Translates exceptions raised below it (the checks and the servicers), and answers a
    request that could not be decoded before anything else sees it. The chain
    (call_chain.py) runs the steps below inside its ``try``, and ``abort`` in its ``except``."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        is_outage: Callable[[Exception], bool] = lambda _exc: False,
    ) -> None:
        self._metrics = metrics
        self._is_outage = is_outage

    async def abort(self, context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
        """End the call with the status ``exc`` stands for (``abort_with``)."""
        await abort_with(context, exc, is_outage=self._is_outage)

    async def decoded(self, requests: AsyncIterator[Any], method_name: str) -> AsyncIterator[Any]:
        """A client stream's messages, failing at the first one that could not be decoded."""
        async for request in requests:
            if isinstance(request, Undecodable):
                raise self.malformed(request, method_name)
            yield request

    def malformed(self, request: Undecodable, method_name: str) -> InvalidArgument:
        """The error for an undecodable request, counted and logged."""
        # Once, without a traceback: it says nothing about our code, and a client can send
        # any number of them.
        log.warning("request not decodable", problem=request.problem)
        self._metrics.malformed_requests.labels(method=method_name).inc()
        return malformed(request)


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: Exception,
    *,
    is_outage: Callable[[Exception], bool] = lambda _exc: False,
) -> NoReturn:
    """End the call with the status ``exc`` stands for; a store's outage (``is_outage``) is
    UNAVAILABLE with RetryInfo, logged without a traceback."""
    if isinstance(exc, grpc.aio.BaseError | asyncio.CancelledError):
        # grpc's own: already a status (AbortError), the client gone mid-write
        # (ExecuteBatchError), or the server stopping. grpc ends the call itself, quietly
        # when the client has left; as INTERNAL with a traceback they would drown the log.
        raise exc
    request_id = structlog.contextvars.get_contextvars().get("request_id", "")
    if not isinstance(exc, DomainError) and is_outage(exc):
        log.warning("store unavailable", detail=f"{type(exc).__name__}: {exc}")
        exc = Unavailable("a store is unavailable; retry shortly", reason="STORE_UNAVAILABLE")
    elif not isinstance(exc, DomainError):
        log.error("unexpected error", exc_info=exc)
        exc = DomainError(f"internal error; quote request id {request_id} when reporting it")
    elif isinstance(exc, Unavailable):
        # The caller gets the reason; what failed underneath (a store's error) is the log's.
        log.warning("unavailable", reason=exc.reason, detail=str(exc))
    status, trailing = to_status(exc, request_id=request_id)
    await send_headers(context)  # a call that defers its headers still gets its request id
    await context.abort(
        exc.code,
        exc.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()), *trailing),
    )


def to_status(
    error: DomainError, *, request_id: str = ""
) -> tuple[status_pb2.Status, tuple[tuple[str, str], ...]]:
    """The rich status for ``error``, and any extra trailing metadata. Its ErrorInfo carries
    the call's request id, so an error passed on without its headers can still be quoted."""
    metadata = dict(error.metadata)
    if request_id:
        metadata.setdefault("request_id", request_id)
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
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
    if isinstance(error, Unavailable):
        details.append(
            error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_seconds))
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
        details.append(
            error_details_pb2.RetryInfo(retry_delay=_duration(error.retry_after_seconds))
        )
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


def _duration(seconds: float) -> duration_pb2.Duration:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(seconds * 1e9)))
    return delay
