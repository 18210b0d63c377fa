"""Composition root: creates every client inside the running loop and wires the server.

Nothing here runs at import time. ``create_resources`` opens the clients, ``build_server``
assembles the gRPC server around them, and ``ChatServer`` owns start-up and the graceful
shutdown order (stop accepting, drain in-flight calls, flush Kafka, close clients).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import redis.asyncio as redis
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio health servicer, which grpcio-health-checking ships as `aio`.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import (
    chat_service_pb2,
    delivery_service_pb2,
    ingest_service_pb2,
    session_service_pb2,
    tenant_service_pb2,
)
from server.domain.tenant import Tenant
from server.events.publisher import KafkaEventPublisher
from server.health import Dependency, HealthMonitor
from server.interceptors.chain import build_interceptors
from server.repositories.tenants_file import load_tenants
from server.settings import Settings

log = structlog.get_logger("chat.server")


#: The services this server serves, by full name. ResponderService is not among them: the
#: chat service is its client.
SERVED_SERVICES: tuple[str, ...] = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (chat_service_pb2, "ChatService"),
        (session_service_pb2, "SessionService"),
        (ingest_service_pb2, "IngestService"),
        (delivery_service_pb2, "DeliveryService"),
        (tenant_service_pb2, "TenantService"),
    )
)


@dataclass(slots=True)
class Resources:
    """The process's clients, created once inside the event loop and shared."""

    mongo: AsyncMongoClient[dict[str, Any]]
    database: AsyncDatabase[dict[str, Any]]
    redis: redis.Redis
    publisher: KafkaEventPublisher
    tenants: Mapping[str, Tenant]

    async def close(self) -> None:
        """Flush the Kafka producer first (it may still hold events), then close the rest."""
        await self.publisher.close()
        await self.redis.aclose()
        await self.mongo.close()


async def create_resources(settings: Settings) -> Resources:
    """Open the clients. None of them needs its server to be up yet."""
    tenants = load_tenants(settings.tenants_file) if settings.tenants_file else {}
    if not tenants:
        log.warning("no tenants configured; set CHAT_TENANTS_FILE")
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, appname="chat-server", serverSelectionTimeoutMS=5000
    )
    return Resources(
        mongo=mongo,
        database=mongo[settings.mongodb_database],
        redis=redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5),
        publisher=KafkaEventPublisher(bootstrap_servers=settings.kafka_bootstrap),
        tenants=tenants,
    )


def _dependencies(resources: Resources) -> list[Dependency]:
    async def ping_mongo() -> None:
        await resources.mongo.admin.command("ping")

    async def ping_redis() -> None:
        await resources.redis.ping()

    return [
        Dependency("mongodb", ping_mongo, required=True),
        Dependency("redis", ping_redis, required=True),
        Dependency("kafka", resources.publisher.probe, required=False),
    ]


class ChatServer:
    """The gRPC server with its health monitor; start, then stop exactly once."""

    def __init__(self, *, settings: Settings, resources: Resources) -> None:
        self._settings = settings
        self._resources = resources
        self._server = grpc.aio.server(
            interceptors=build_interceptors(),
            # One process per port unless CHAT_WORKERS asks for more: without this, a second
            # server started by mistake would silently share the port.
            options=[("grpc.so_reuseport", 0)],
        )
        self._health = health_aio.HealthServicer()
        self._monitor = HealthMonitor(
            servicer=self._health,
            dependencies=_dependencies(resources),
            service_names=SERVED_SERVICES,
            interval_seconds=settings.health_check_interval_seconds,
        )
        self._monitor_task: asyncio.Task[None] | None = None
        self.port = 0
        self._register()

    def _register(self) -> None:
        # The chat.v1 servicers are registered as their issues implement them (pipeline,
        # sessions, ingest, delivery, tenants). Until then grpc itself answers UNIMPLEMENTED,
        # while reflection already serves the whole contract.
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                *SERVED_SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )

    async def start(self) -> int:
        """Probe dependencies once, bind, start serving; returns the bound port."""
        await self._monitor.check_once()
        self.port = self._server.add_insecure_port(self._settings.grpc_address)
        await self._server.start()
        self._monitor_task = asyncio.create_task(self._monitor.run(), name="health-monitor")
        log.info("chat server listening", address=self._settings.grpc_address, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Report NOT_SERVING, drain in-flight calls within the grace period, close clients."""
        log.info("shutting down", grace_seconds=self._settings.shutdown_grace_seconds)
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        await self._resources.close()
        log.info("stopped")
