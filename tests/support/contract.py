"""The contract's RPCs, read from the generated descriptors (shared by the tests)."""

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
from server.api.served import SERVED_SERVICES

SERVICE_MODULES = (
    chat_service_pb2,
    session_service_pb2,
    ingest_service_pb2,
    delivery_service_pb2,
    tenant_service_pb2,
    analytics_service_pb2,
    audit_service_pb2,
)


def served_methods() -> set[str]:
    """Full method names ("/chat.v1.ChatService/SendMessage") of every served service."""
    methods: set[str] = set()
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name in SERVED_SERVICES:
                methods |= {f"/{service.full_name}/{m.name}" for m in service.methods}
    return methods
