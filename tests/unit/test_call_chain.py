"""The interceptor chain as one grpc interceptor: a method's handler is built once, a name no
service has is not remembered, the checks run in their order for every method but the public
ones, and streams pass through whether their handler yields or writes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from server.domain.errors import PermissionDenied
from server.interceptors.call_chain import CallChain
from server.interceptors.checks import CallerCheck
from server.interceptors.error_boundary import ErrorBoundaryInterceptor
from server.interceptors.request_context import RequestContextInterceptor
from server.metrics import Metrics

SEND = "/chat.v1.ChatService/SendMessage"
STREAM = "/chat.v1.ChatService/StreamConversationEvents"
HEALTH = "/grpc.health.v1.Health/Check"


class Context:
    """The part of a ServicerContext the steps use."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None
        self.headers: list[tuple[tuple[str, str], ...]] = []
        self.written: list[Any] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def send_initial_metadata(self, headers: tuple[tuple[str, str], ...]) -> None:
        self.headers.append(headers)

    async def write(self, message: Any) -> None:
        self.written.append(message)

    def code(self) -> grpc.StatusCode | None:
        return self.status

    async def abort(self, code: grpc.StatusCode, _details: str, **_kwargs: Any) -> None:
        self.status = code
        raise grpc.aio.AbortError


class Recorded(CallerCheck):
    def __init__(self, name: str, seen: list[str], *, refuse: bool = False) -> None:
        self._name, self._seen, self._refuse = name, seen, refuse

    async def check(self, context: Any, method_name: str) -> None:  # noqa: ARG002
        self._seen.append(self._name)
        if self._refuse:
            raise PermissionDenied("no", reason="TEST_REFUSED")


def chain(*checks: CallerCheck) -> CallChain:
    metrics = Metrics()
    return CallChain(
        request_context=RequestContextInterceptor(),
        error_boundary=ErrorBoundaryInterceptor(metrics=metrics),
        checks=checks,
    )


class Details:
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def served(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
) -> tuple[Callable[[Any], Awaitable[Any]], list[str]]:
    asked: list[str] = []

    async def continuation(details: Any) -> Any:
        asked.append(details.method)
        return handler

    return continuation, asked


async def test_a_methods_handler_is_built_once() -> None:
    async def unary(request: str, _context: Any) -> str:
        return request.upper()

    continuation, asked = served(grpc.unary_unary_rpc_method_handler(unary))
    interceptor = chain()
    first = await interceptor.intercept_service(continuation, Details(SEND))  # type: ignore[arg-type]
    again = await interceptor.intercept_service(continuation, Details(SEND))  # type: ignore[arg-type]
    assert first is again
    assert asked == [SEND]
    assert await first.unary_unary("hi", Context()) == "HI"


async def test_a_name_no_service_has_is_not_remembered() -> None:
    continuation, asked = served(None)
    interceptor = chain()
    for _ in range(2):
        found = await interceptor.intercept_service(continuation, Details("/made.Up/Name"))  # type: ignore[arg-type]
        assert found is None
    assert asked == ["/made.Up/Name", "/made.Up/Name"]


async def test_the_checks_run_in_order_before_the_servicer_but_not_for_public_methods() -> None:
    seen: list[str] = []

    async def unary(_request: str, _context: Any) -> str:
        seen.append("servicer")
        return "ok"

    continuation, _ = served(grpc.unary_unary_rpc_method_handler(unary))
    interceptor = chain(Recorded("auth", seen), Recorded("tenant", seen))
    handler = await interceptor.intercept_service(continuation, Details(SEND))  # type: ignore[arg-type]
    await handler.unary_unary("x", Context())
    assert seen == ["auth", "tenant", "servicer"]
    seen.clear()
    public = await interceptor.intercept_service(continuation, Details(HEALTH))  # type: ignore[arg-type]
    await public.unary_unary("x", Context())
    assert seen == ["servicer"]


async def test_a_refusal_ends_the_call_with_its_code_before_the_servicer() -> None:
    seen: list[str] = []

    async def unary(_request: str, _context: Any) -> str:
        seen.append("servicer")
        return "ok"

    continuation, _ = served(grpc.unary_unary_rpc_method_handler(unary))
    interceptor = chain(Recorded("auth", seen, refuse=True), Recorded("tenant", seen))
    handler = await interceptor.intercept_service(continuation, Details(SEND))  # type: ignore[arg-type]
    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        await handler.unary_unary("x", context)
    assert seen == ["auth"]
    assert context.status == grpc.StatusCode.PERMISSION_DENIED
    assert len(context.headers) == 1  # the request id went before the status


@pytest.mark.parametrize("writes", [False, True])
async def test_a_stream_passes_through_whether_its_handler_yields_or_writes(writes: bool) -> None:
    async def yielding(_request: str, _context: Any) -> AsyncIterator[int]:
        for n in range(3):
            yield n

    async def writing(_request: str, context: Any) -> None:
        for n in range(3):
            await context.write(n)

    continuation, _ = served(grpc.unary_stream_rpc_method_handler(writing if writes else yielding))
    seen: list[str] = []
    interceptor = chain(Recorded("auth", seen))
    handler = await interceptor.intercept_service(continuation, Details(STREAM))  # type: ignore[arg-type]
    context = Context()
    yielded = [n async for n in handler.unary_stream("x", context)]
    assert (yielded, context.written) == (([], [0, 1, 2]) if writes else ([0, 1, 2], []))
    assert seen == ["auth"]
