"""abort_with: grpc's own errors pass through; everything else becomes a status."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc._cython import cygrpc

from server.domain.errors import NotFound
from server.interceptors.error_boundary import abort_with


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
