"""Tracing's switches and hooks: when the environment turns it on, that off it costs a flag
check, and that a group commit's batch, the outbox relay and the log lines keep each call's
trace (spans recorded in memory by the SDK, no exporter)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.services.group_commit import GroupCommit
from server.settings import SettingsError
from server.tracing import spans
from server.tracing.setup import configure_tracing, tracing_wanted
from server.tracing.state import STATE

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def traced() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for one test (the global provider can be set only once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    STATE.enabled = True
    yield _EXPORTER
    STATE.enabled = False


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ],
)
def test_traces_are_on_only_when_an_exporter_is_asked_for(
    environ: dict[str, str], wanted: bool
) -> None:
    assert tracing_wanted(environ) is wanted


def test_an_unknown_exporter_or_protocol_is_refused_by_name() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER: unknown exporter 'jaeger'"):
        tracing_wanted({"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(SettingsError, match="'grpc' is not supported; use http/protobuf"):
        configure_tracing(
            service_name="chat-server",
            environ={
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            },
        )
    assert STATE.enabled is False


def test_off_the_hooks_do_nothing() -> None:
    assert configure_tracing(service_name="chat-server", environ={}) is False
    assert spans.span("reply.job", parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01") is spans.span(
        "delivery.send"
    )
    assert spans.current_traceparent() == ""
    assert spans.continuing("ingest.webhook", "00-" + "1" * 32 + "-" + "2" * 16 + "-01") is (
        spans.span("delivery.send")
    )
    assert spans.trace_fields("acme", "c1") == {}
    assert spans.record_headers() == []
    assert spans.server_interceptors() == []
    assert spans.add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_a_queued_record_continues_the_trace_that_wrote_it(
    traced: InMemorySpanExporter,
) -> None:
    with spans.span("call") as call:
        written = spans.trace_fields("acme", "c1")["traceparent"]
        line = spans.add_trace_ids(None, "info", {"event": "x", "request_id": "r1"})
    call_context = call.get_span_context()
    assert line == {
        "event": "x",
        "request_id": "r1",
        "trace_id": format(call_context.trace_id, "032x"),
        "span_id": format(call_context.span_id, "016x"),
    }
    # Later, elsewhere: the relay's producer span, then the worker's consumer span.
    with spans.producing([("chat.message.received.v1", written), ("t", "")]) as headers:
        assert headers[1] == []
        [(name, value)] = headers[0]
    assert name == "traceparent"
    with spans.span("worker.handle", parent=spans.traceparent_in([(name, value)])):
        pass
    finished = {s.name: s for s in traced.get_finished_spans()}
    producer, consumer = finished["outbox.relay"], finished["worker.handle"]
    assert producer.kind == trace.SpanKind.PRODUCER
    assert producer.parent is not None
    assert producer.parent.span_id == call_context.span_id
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer.context.span_id
    assert {s.context.trace_id for s in finished.values()} == {call_context.trace_id}


def test_an_event_carried_in_another_webhooks_call_continues_its_own_trace(
    traced: InMemorySpanExporter,
) -> None:
    with spans.span("webhook") as webhook:
        carried = spans.current_traceparent()
    with spans.span("call") as call:
        with spans.continuing("ingest.webhook", ""):  # the call's own webhook: no span
            own = spans.current_traceparent()
        with spans.continuing("ingest.webhook", carried):
            written = spans.trace_fields("acme", "c1")["traceparent"]
    assert own.split("-")[1:3] == [
        format(call.get_span_context().trace_id, "032x"),
        format(call.get_span_context().span_id, "016x"),
    ]
    finished = {s.name: s for s in traced.get_finished_spans()}
    assert set(finished) == {"webhook", "call", "ingest.webhook"}
    continued = finished["ingest.webhook"]
    assert continued.parent is not None
    assert continued.parent.span_id == webhook.get_span_context().span_id
    assert continued.context.trace_id != call.get_span_context().trace_id
    assert written.split("-")[1] == format(webhook.get_span_context().trace_id, "032x")


async def test_a_batch_keeps_each_callers_trace(traced: InMemorySpanExporter) -> None:
    """Two calls committed in one batch: what the batch writes for each conversation carries
    that call's trace; the batch's span is the first call's child and links the second."""
    release = asyncio.Event()
    written: dict[str, str] = {}

    async def commit(items: list[tuple[str, str]]) -> list[str | Exception]:
        await release.wait()
        for tenant, conversation in items:
            written[conversation] = spans.traceparent_for(tenant, conversation)
        return [conversation for _, conversation in items]

    group: GroupCommit[tuple[str, str], str] = GroupCommit(
        commit, key=lambda item: item, name="ingest.apply"
    )
    callers: dict[str, str] = {}

    async def call(conversation: str) -> str:
        with spans.span(f"call {conversation}"):
            callers[conversation] = spans.current_traceparent()
            return await group.submit(("acme", conversation))

    blocker = asyncio.create_task(call("c0"))  # holds the first batch while two more wait
    await asyncio.sleep(0)
    pair = [asyncio.create_task(call(c)) for c in ("c1", "c2")]
    await asyncio.sleep(0)
    release.set()
    assert [await task for task in (blocker, *pair)] == ["c0", "c1", "c2"]
    assert written == callers
    assert len({value.split("-")[1] for value in written.values()}) == 3  # three traces
    batches = [s for s in traced.get_finished_spans() if s.name == "ingest.apply"]
    shared = next(s for s in batches if s.attributes and s.attributes["chat.batch_size"] == 2)
    first, second = (callers[c].split("-") for c in ("c1", "c2"))
    assert shared.parent is not None
    assert format(shared.parent.span_id, "016x") == first[2]
    assert [format(link.context.span_id, "016x") for link in shared.links] == [second[2]]
