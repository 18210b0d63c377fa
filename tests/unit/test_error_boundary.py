"""abort_with: grpc's own errors pass through; everything else becomes a status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc._cython import cygrpc

from server.domain.errors import NotFound, Unavailable
from server.interceptors.error_boundary import abort_with, to_status


class Context:
    def __init__(self) -> None:
        self.aborted: list[tuple[Any, str]] = []

    async def abort(self, code: Any, message: str, **_: Any) -> None:
        self.aborted.append((code, message))
        raise grpc.aio.AbortError


@pytest.mark.parametrize(
    "error",
    [
        cygrpc.ExecuteBatchError("the client has gone"),  # a write after the client left
        grpc.aio.UsageError("no writes after the status"),
        grpc.aio.AbortError(),
    ],
)
async def test_grpcs_own_errors_pass_through(error: Exception) -> None:
    context = Context()
    with pytest.raises(type(error)) as raised:
        await abort_with(context, error)  # type: ignore[arg-type]
    assert raised.value is error
    assert context.aborted == []


async def test_a_domain_error_becomes_its_status() -> None:
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await abort_with(context, NotFound("conversation not found"))  # type: ignore[arg-type]
    assert context.aborted == [(grpc.StatusCode.NOT_FOUND, "conversation not found")]


def test_unavailable_says_when_to_retry() -> None:
    status, _ = to_status(Unavailable("a store is unavailable; retry shortly"), request_id="r-1")
    kinds = {detail.TypeName() for detail in status.details}
    assert "google.rpc.RetryInfo" in kinds
    [packed] = [d for d in status.details if d.TypeName() == "google.rpc.RetryInfo"]
    retry = error_details_pb2.RetryInfo()
    packed.Unpack(retry)
    assert retry.retry_delay.seconds == 1
    [info_any] = [d for d in status.details if d.TypeName() == "google.rpc.ErrorInfo"]
    info = error_details_pb2.ErrorInfo()
    info_any.Unpack(info)
    assert info.metadata["request_id"] == "r-1"
