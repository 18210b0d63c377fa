"""The hooks the code calls: spans of our own, and the W3C ``traceparent`` that carries a trace
through what is not a call (the outbox and its Kafka records, the reply and delivery queues,
a group commit's shared transaction).

Every hook checks ``STATE.enabled`` first and returns at once while tracing is off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.tracing.state import STATE

TRACEPARENT = "traceparent"
_PROPAGATOR = TraceContextTextMapPropagator()
_NOTHING: contextlib.nullcontext[None] = contextlib.nullcontext()
#: Within a group commit's transaction: each item's trace, by the commit's key, which is
#: (tenant id, conversation id) for every group commit of ours.
_BATCH: ContextVar[Mapping[Hashable, str] | None] = ContextVar("traced_batch", default=None)

INTERNAL = SpanKind.INTERNAL
PRODUCER = SpanKind.PRODUCER
CONSUMER = SpanKind.CONSUMER


def _tracer() -> trace.Tracer:
    return trace.get_tracer("chat-service")


def span(
    name: str,
    *,
    parent: str = "",
    kind: SpanKind = INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
) -> contextlib.AbstractContextManager[Any]:
    """A span of ours around a block: a child of the current span, or of ``parent`` (a
    traceparent from a queued record) when one is given. Nothing while tracing is off."""
    if not STATE.enabled:
        return _NOTHING
    context = _extract(parent) if parent else None
    return _tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes)


def continuing(name: str, traceparent: str) -> contextlib.AbstractContextManager[Any]:
    """A span of ours in the trace of ``traceparent`` when one is given (work carried in a
    call of another trace's); nothing otherwise, so the work stays in the current span."""
    if not traceparent:
        return _NOTHING
    return span(name, parent=traceparent)


def current_traceparent() -> str:
    """The current span as a W3C traceparent, to store with queued work ("" when none)."""
    if not STATE.enabled:
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def traceparent_for(tenant_id: str, conversation_id: str) -> str:
    """The trace of what is written for this conversation: within a group commit, the trace
    of the call whose item it is (the batch's transaction runs in a task of its own), else
    the current span's."""
    if not STATE.enabled:
        return ""
    batch = _BATCH.get()
    if batch is not None:
        found = batch.get((tenant_id, conversation_id))
        if found:
            return found
    return current_traceparent()


@contextlib.contextmanager
def committing(name: str, traces: Sequence[tuple[Hashable, str]]) -> Iterator[None]:
    """A group commit's transaction: one span, a child of the first item's trace and linked
    to the others', with each item's trace at hand for what the transaction writes."""
    parents = [parent for _, parent in traces if parent]
    links = [
        Link(trace.get_current_span(_extract(parent)).get_span_context()) for parent in parents[1:]
    ]
    context = _extract(parents[0]) if parents else None
    token = _BATCH.set(dict(traces))
    try:
        with _tracer().start_as_current_span(
            name, context=context, links=links, attributes={"chat.batch_size": len(traces)}
        ):
            yield
    finally:
        _BATCH.reset(token)


def _extract(traceparent: str) -> otel_context.Context:
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


def record_headers(traceparent: str = "") -> list[tuple[str, bytes]]:
    """Kafka record headers carrying the current span (or ``traceparent``)."""
    value = traceparent or current_traceparent()
    return [(TRACEPARENT, value.encode())] if value else []


def traceparent_in(headers: Sequence[tuple[str, bytes]] | None) -> str:
    """The traceparent of a Kafka record's headers ("" when it has none)."""
    for key, value in headers or ():
        if key == TRACEPARENT:
            return value.decode("ascii", "replace")
    return ""


def trace_ids() -> dict[str, str]:
    """The current span's ids as log fields (none when not traced)."""
    if not STATE.enabled:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }


def add_trace_ids(
    _logger: object, _name: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """structlog processor: the current trace and span ids beside the request id."""
    if STATE.enabled and "trace_id" not in event_dict:
        event_dict.update(trace_ids())
    return event_dict


def server_interceptors() -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The gRPC server span (opentelemetry-instrumentation-grpc), health checks left out;
    none while tracing is off."""
    if not STATE.enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415
    from opentelemetry.instrumentation.grpc.filters import (  # noqa: PLC0415
        health_check,
        negate,
    )

    # The instrumentation ships no type hints.
    make: Callable[..., grpc.aio.ServerInterceptor[Any, Any]] = aio_server_interceptor
    return [make(filter_=negate(health_check()))]


@contextlib.contextmanager
def producing(
    records: Sequence[tuple[str, str]],
) -> Iterator[list[list[tuple[str, bytes]]]]:
    """The relay's producer spans for (topic, traceparent) records: one per traced record, a
    child of the call that wrote it, from before the send until the broker has the batch.
    Yields each record's headers, carrying its producer span."""
    if not STATE.enabled:
        yield [[] for _ in records]
        return
    tracer = _tracer()
    spans = [
        tracer.start_span(
            "outbox.relay",
            context=_extract(parent),
            kind=PRODUCER,
            attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
        )
        if parent
        else None
        for topic, parent in records
    ]
    headers: list[list[tuple[str, bytes]]] = []
    for producer_span in spans:
        carrier: dict[str, str] = {}
        if producer_span is not None:
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(producer_span))
        headers.append([(key, value.encode()) for key, value in carrier.items()])
    try:
        yield headers
    except BaseException as exc:
        for producer_span in spans:
            if producer_span is not None:
                producer_span.record_exception(exc)
                producer_span.set_status(trace.StatusCode.ERROR)
        raise
    finally:
        for producer_span in spans:
            if producer_span is not None:
                producer_span.end()


_NO_FIELDS: Mapping[str, str] = MappingProxyType({})


def trace_fields(tenant_id: str, conversation_id: str) -> Mapping[str, str]:
    """The ``traceparent`` field of a queued document (a reply job, a delivery) written for
    this conversation; no field when not traced."""
    if not STATE.enabled:
        return _NO_FIELDS
    trace_parent = traceparent_for(tenant_id, conversation_id)
    return {TRACEPARENT: trace_parent} if trace_parent else _NO_FIELDS
