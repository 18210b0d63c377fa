"""Tracing set-up, once per process, from the standard ``OTEL_*`` variables.

Tracing is on when an exporter is asked for: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``)
or, without it, an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn it off. Off, nothing is instrumented and no SDK object is
made: the API's no-op tracer is never even reached, because the hooks check ``STATE`` first.
The SDK reads the rest itself (endpoint, headers, timeouts, ``OTEL_TRACES_SAMPLER``,
``OTEL_BSP_*``, ``OTEL_RESOURCE_ATTRIBUTES``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from server.settings import SettingsError
from server.tracing.state import STATE

EXPORTERS = ("otlp", "console")
#: The one OTLP protocol shipped (opentelemetry-exporter-otlp-proto-http).
PROTOCOL = "http/protobuf"


def tracing_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (see the module's docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporters(environ)
    if exporters is not None:
        return bool(exporters)
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _exporters(environ: Mapping[str, str]) -> list[str] | None:
    """The exporters named by OTEL_TRACES_EXPORTER (None when it is unset)."""
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not raw:
        return None
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} "
            f"(one or more of {', '.join(EXPORTERS)}, or none)"
        )
    return names


def configure_tracing(
    *, service_name: str, http_server: bool = False, environ: Mapping[str, str] | None = None
) -> bool:
    """Install the SDK and the instrumentations when the environment asks for traces; True
    when it did. Call once, before any client or server is created (the instrumentations
    patch the classes those are made from). ``http_server``: trace aiohttp's server too (the
    bridge)."""
    environ = os.environ if environ is None else environ
    if not tracing_wanted(environ):
        return False
    protocol = environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOL)
    )
    exporters = _exporters(environ) or ["otlp"]
    if "otlp" in exporters and protocol != PROTOCOL:
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use {PROTOCOL}"
        )
    # Imported here: a process without traces never loads the SDK.
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter_name in exporters:
        exporter: SpanExporter
        if exporter_name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                OTLPSpanExporter,
            )

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter(service_name=name)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _instrument(http_server=http_server)
    STATE.enabled = True
    return True


def _instrument(*, http_server: bool) -> None:
    """The maintained instrumentations: gRPC clients (the bridge's forwarder, the external
    responder), aiohttp's client (the platforms' APIs), PyMongo and redis-py. The gRPC server
    side is an interceptor of the chain (server/interceptors/chain.py)."""
    from opentelemetry.instrumentation.aiohttp_client import (  # noqa: PLC0415
        AioHttpClientInstrumentor,
    )
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient  # noqa: PLC0415
    from opentelemetry.instrumentation.grpc.filters import (  # noqa: PLC0415
        health_check,
        negate,
    )
    from opentelemetry.instrumentation.pymongo import PymongoInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    # The instrumentation ships no type hints.
    client = GrpcAioInstrumentorClient(filter_=negate(health_check()))  # type: ignore[no-untyped-call]
    client.instrument()
    AioHttpClientInstrumentor().instrument()
    PymongoInstrumentor().instrument()
    RedisInstrumentor().instrument()
    if http_server:
        from opentelemetry.instrumentation.aiohttp_server import (  # noqa: PLC0415
            AioHttpServerInstrumentor,
        )

        # Probes and scrapes every few seconds would bury the webhooks' traces.
        os.environ.setdefault("OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", "healthz,metrics")
        AioHttpServerInstrumentor().instrument()
