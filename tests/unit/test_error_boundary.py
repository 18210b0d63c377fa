"""abort_with: grpc's own errors pass through; everything else becomes a status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc._cython import cygrpc
from pymongo.errors import (
    AutoReconnect,
    ExecutionTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)
from structlog.testing import capture_logs

from server.domain.errors import NotFound, Unavailable
from server.interceptors.error_boundary import abort_with, to_status
from server.repositories.stores import is_outage


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


async def test_a_stores_outage_is_unavailable_not_internal() -> None:
    context = Context()
    down = ServerSelectionTimeoutError("no primary reachable")
    with capture_logs() as logs, pytest.raises(grpc.aio.AbortError):
        await abort_with(context, down, is_outage=is_outage)  # type: ignore[arg-type]
    assert context.aborted == [
        (grpc.StatusCode.UNAVAILABLE, "a store is unavailable; retry shortly")
    ]
    assert [line["event"] for line in logs] == ["store unavailable"]
    assert "exc_info" not in logs[0]


def test_outages_are_told_from_bugs() -> None:
    stepped_down = OperationFailure("not primary", code=10107)
    stepped_down._add_error_label("TransientTransactionError")
    assert is_outage(stepped_down)
    assert is_outage(AutoReconnect("connection reset"))
    assert is_outage(ExecutionTimeout("operation exceeded time limit"))
    assert not is_outage(OperationFailure("bad query", code=2))
    assert not is_outage(ValueError("a bug"))
