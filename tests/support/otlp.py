"""An OTLP/HTTP receiver for the trace tests: the processes export to it
(``OTEL_EXPORTER_OTLP_ENDPOINT``), and it keeps every span it is sent, decoded with
``opentelemetry-proto``."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as exported: ids in hex, the kind's name (SERVER, CLIENT, ...), its
    process's service name."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    attributes: dict[str, str]


@dataclass
class Receiver:
    """What the processes exported, and where to send it."""

    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    #: Requests it refused (not protobuf, undecodable), to show in a failure.
    refused: list[str] = field(default_factory=list)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]


def _decoded(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        service = next(
            (
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ),
            "",
        )
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=span.name,
                        kind=SpanProto.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        service=service,
                        attributes={
                            a.key: str(getattr(a.value, a.value.WhichOneof("value") or "", ""))
                            for a in span.attributes
                        },
                    )
                )
    return spans


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    """A receiver on a free port, for the duration of the block."""
    receiver = Receiver()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if request.content_type != PROTOBUF:
            receiver.refused.append(f"content type {request.content_type}")
            return web.Response(status=415, text="protobuf only")
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception as exc:  # noqa: BLE001 - reported by the test that reads `refused`
            receiver.refused.append(f"undecodable: {exc!r}")
            return web.Response(status=400, text="undecodable")
        receiver.spans += _decoded(message)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF
        )

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.endpoint = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield receiver
    finally:
        await runner.cleanup()
