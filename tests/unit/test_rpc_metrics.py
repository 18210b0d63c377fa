"""The RPC metrics, as the request-id interceptor reports them: durations by method and final
code, calls in flight and open streams, for unary and streaming handlers, on success, on an
error and when cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from server.interceptors.request_context import RequestContextInterceptor
from server.interceptors.rpc_metrics import RpcMetrics
from server.metrics import Metrics

SEND = "/chat.v1.ChatService/SendMessage"
STREAM = "/chat.v1.ChatService/StreamConversationEvents"


class Context:
    """The part of a ServicerContext the interceptor uses: the caller's metadata, the response
    headers it sends, the code a handler set."""

    def __init__(self) -> None:
        self.status: grpc.StatusCode | None = None
        self.headers: list[tuple[tuple[str, str], ...]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def send_initial_metadata(self, headers: tuple[tuple[str, str], ...]) -> None:
        self.headers.append(headers)

    def code(self) -> grpc.StatusCode | None:
        return self.status


def intercepting(metrics: Metrics) -> RequestContextInterceptor:
    return RequestContextInterceptor(rpc_metrics=RpcMetrics(metrics=metrics))


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_a_unary_call_is_in_flight_while_it_runs_then_timed_by_its_code() -> None:
    metrics = Metrics()
    interceptor = intercepting(metrics)
    seen: list[float] = []

    async def handler(request: str, _context: Any) -> str:
        seen.append(value(metrics, "chat_rpc_in_flight_calls", method=SEND))
        return request.upper()

    context = Context()
    assert await interceptor.intercept(handler, "hi", context, SEND) == "HI"  # type: ignore[arg-type]
    assert seen == [1.0]
    assert value(metrics, "chat_rpc_in_flight_calls", method=SEND) == 0.0
    assert value(metrics, "chat_rpc_duration_seconds_count", method=SEND, code="OK") == 1.0
    assert value(metrics, "chat_rpc_duration_seconds_sum", method=SEND, code="OK") > 0.0


async def test_an_error_is_recorded_with_the_code_the_boundary_set() -> None:
    metrics = Metrics()
    interceptor = intercepting(metrics)
    context = Context()

    async def refused(_request: str, _context: Any) -> str:
        context.status = grpc.StatusCode.NOT_FOUND
        raise grpc.aio.AbortError

    async def crashed(_request: str, _context: Any) -> str:
        raise RuntimeError

    with pytest.raises(grpc.aio.AbortError):
        await interceptor.intercept(refused, "x", context, SEND)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await interceptor.intercept(crashed, "x", Context(), SEND)  # type: ignore[arg-type]
    assert value(metrics, "chat_rpc_duration_seconds_count", method=SEND, code="NOT_FOUND") == 1
    assert value(metrics, "chat_rpc_duration_seconds_count", method=SEND, code="UNKNOWN") == 1
    assert value(metrics, "chat_rpc_in_flight_calls", method=SEND) == 0.0


async def test_a_stream_is_open_until_it_ends_and_timed_to_its_end() -> None:
    metrics = Metrics()
    interceptor = intercepting(metrics)
    gauges: list[tuple[float, float]] = []

    async def events(_request: str, _context: Any) -> AsyncIterator[int]:
        for n in range(3):
            gauges.append(
                (
                    value(metrics, "chat_rpc_open_streams", method=STREAM),
                    value(metrics, "chat_rpc_in_flight_calls", method=STREAM),
                )
            )
            yield n

    responses = await interceptor.intercept(events, "x", Context(), STREAM)  # type: ignore[arg-type]
    assert [n async for n in responses] == [0, 1, 2]
    assert gauges == [(1.0, 1.0)] * 3
    assert value(metrics, "chat_rpc_open_streams", method=STREAM) == 0.0
    assert value(metrics, "chat_rpc_in_flight_calls", method=STREAM) == 0.0
    assert value(metrics, "chat_rpc_duration_seconds_count", method=STREAM, code="OK") == 1


async def test_a_cancelled_stream_is_closed_and_counted_cancelled() -> None:
    metrics = Metrics()
    interceptor = intercepting(metrics)
    waiting = asyncio.Event()

    async def forever(_request: str, _context: Any) -> AsyncIterator[int]:
        yield 0
        waiting.set()
        await asyncio.Event().wait()
        yield 1  # pragma: no cover - never reached

    responses = await interceptor.intercept(forever, "x", Context(), STREAM)  # type: ignore[arg-type]

    async def consume() -> None:
        async for _ in responses:
            pass

    task = asyncio.create_task(consume())
    await waiting.wait()
    assert value(metrics, "chat_rpc_open_streams", method=STREAM) == 1.0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(metrics, "chat_rpc_open_streams", method=STREAM) == 0.0
    assert value(metrics, "chat_rpc_in_flight_calls", method=STREAM) == 0.0
    assert value(metrics, "chat_rpc_duration_seconds_count", method=STREAM, code="CANCELLED") == 1


async def test_a_stream_never_iterated_leaves_no_call_in_flight() -> None:
    metrics = Metrics()
    interceptor = intercepting(metrics)

    async def events(_request: str, _context: Any) -> AsyncIterator[int]:
        yield 0  # pragma: no cover - never iterated

    responses = await interceptor.intercept(events, "x", Context(), STREAM)  # type: ignore[arg-type]
    await responses.aclose()
    assert value(metrics, "chat_rpc_in_flight_calls", method=STREAM) == 0.0
    assert value(metrics, "chat_rpc_open_streams", method=STREAM) == 0.0
