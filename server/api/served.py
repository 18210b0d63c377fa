"""The services this server serves, by full name (health, reflection and the tests use it).
ResponderService is not among them: the chat service is its client."""

from __future__ import annotations

from chat.v1 import (
    analytics_service_pb2,
    audit_service_pb2,
    chat_service_pb2,
    delivery_service_pb2,
    ingest_service_pb2,
    session_service_pb2,
    tenant_service_pb2,
)

SERVED_SERVICES: tuple[str, ...] = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (chat_service_pb2, "ChatService"),
        (session_service_pb2, "SessionService"),
        (ingest_service_pb2, "IngestService"),
        (delivery_service_pb2, "DeliveryService"),
        (tenant_service_pb2, "TenantService"),
        (analytics_service_pb2, "AnalyticsService"),
        (audit_service_pb2, "AuditService"),
    )
)
