"""The gRPC server: assembled around the wired services, started, and stopped in order.

Start-up: metrics, tenants, one dependency check, bind, then the background loops (health,
outbox relay, session sweep, the reply and delivery queues). Stop: NOT_SERVING, streams
ended, in-flight calls drained within the grace period, the loops finished at their next safe
point, the relay last (so the calls' events are in the outbox), then the clients closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio health servicer, which grpcio-health-checking ships as `aio`.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from chat.v1 import (
    analytics_service_pb2_grpc,
    audit_service_pb2_grpc,
    chat_service_pb2_grpc,
    delivery_service_pb2_grpc,
    ingest_service_pb2_grpc,
    session_service_pb2_grpc,
    tenant_service_pb2_grpc,
)
from server.api.analytics import AnalyticsServicer
from server.api.audit import AuditServicer
from server.api.chat import ChatServicer
from server.api.delivery import DeliveryServicer
from server.api.ingest import IngestServicer
from server.api.served import SERVED_SERVICES
from server.api.sessions import SessionServicer
from server.api.tenants import TenantServicer
from server.auth.scopes import REQUIRED_SCOPES
from server.auth.tokens import build_verifier
from server.backlog_sampler import BacklogSampler
from server.bootstrap import Services, bootstrap
from server.clients import Clients
from server.domain.clock import utc_now
from server.domain.errors import StoreError
from server.health import LIVENESS, SERVING, HealthMonitor
from server.interceptors.chain import ChainDependencies, build_interceptors
from server.metrics import Metrics
from server.repositories.backlog import MongoBacklog
from server.repositories.stores import is_outage
from server.settings import Settings
from server.stopping import finish_task

log = structlog.get_logger("chat.server")

MAX_METADATA_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 25 * 1024 * 1024


class ChatServer:
    """The gRPC server with its health monitor; start, then stop exactly once."""

    def __init__(
        self,
        *,
        settings: Settings,
        clients: Clients,
        required_scopes: Mapping[str, str] = REQUIRED_SCOPES,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    ) -> None:
        self._settings = settings
        self._clients = clients
        self.metrics = Metrics()
        # First: a bad key file fails here, before bootstrap opens the responder's channel.
        verifier = build_verifier(settings.jwt, clients.http)
        self._services = services = bootstrap(
            settings=settings, clients=clients, metrics=self.metrics
        )
        self._server = grpc.aio.server(
            interceptors=build_interceptors(
                ChainDependencies(
                    verifier=verifier,
                    tenants=clients.tenants,
                    limiter=services.stores.limiter,
                    rate_limits=settings.rate_limits,
                    metrics=self.metrics,
                    required_scopes=required_scopes,
                    is_outage=is_outage,
                )
            ),
            options=[
                # One process per port unless CHAT_WORKERS asks for more: without this, a second
                # server started by mistake would silently share the port.
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                # Above gRPC's 8 KiB default, so an oversized token reaches the auth interceptor
                # and gets UNAUTHENTICATED/TOKEN_TOO_LARGE instead of a bare transport error.
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                # Inline media uploads (MediaContent.data) of up to 20 MiB, with room for the rest.
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ],
        )
        self._health = health_aio.HealthServicer()
        _add_servicers(self._server, services, self._health)
        if extra_handlers:
            self._server.add_generic_rpc_handlers(tuple(extra_handlers))
        self._monitor = HealthMonitor(
            servicer=self._health,
            dependencies=clients.dependencies(),
            service_names=SERVED_SERVICES,
            interval_seconds=settings.health_check_interval_seconds,
        )
        self._metrics_runner: web.AppRunner | None = None
        self._sampler = BacklogSampler(
            reader=MongoBacklog(database=clients.database), metrics=self.metrics, clock=utc_now
        )
        self._stopping = asyncio.Event()
        self._monitor_task: asyncio.Task[None] | None = None
        #: The queues and the session sweep, finished after the calls drain.
        self._loop_tasks: list[asyncio.Task[None]] = []
        self._relay_task: asyncio.Task[None] | None = None
        self.metrics_port = 0
        self.port = 0

    async def start(self) -> int:
        """Probe dependencies once, bind, start serving; returns the bound port."""
        settings, services = self._settings, self._services
        if settings.metrics_address:
            self._metrics_runner = await self.metrics.serve(settings.metrics_address)
            self.metrics_port = int(self._metrics_runner.addresses[0][1])
        await services.tenants.start()
        with contextlib.suppress(TimeoutError):
            # A moment for stored tenants to load, so the first check can report SERVING.
            await asyncio.wait_for(services.tenants.wait_loaded(), 2)
        await self._monitor.check_once()
        try:
            await services.stores.limiter.load()
        except StoreError as exc:
            log.warning("rate-limit script not preloaded", error=repr(exc))
        self.port = self._server.add_insecure_port(settings.grpc_address)
        await self._server.start()
        await self._health.set(LIVENESS, SERVING)
        if services.responder_channel is not None:
            # Connect now: the first message's reply would otherwise pay for the connection
            # within the responder's deadline, and could get the fallback text.
            services.responder_channel.get_state(try_to_connect=True)
        stopping = self._stopping
        self._monitor_task = asyncio.create_task(self._monitor.run(stopping), name="health-monitor")
        loops = {
            "session-sweep": services.sessions.sweep(
                stopping, every_seconds=settings.session_sweep_seconds
            ),
            "reply-queue": self._after_tenants_load(services.replies.run),
            "delivery-queue": self._after_tenants_load(services.delivery.run),
            "ingest-inbox": self._after_tenants_load(services.inbox.run),
        }
        if self._metrics_runner is not None:
            loops["backlog-sampler"] = self._sampler.run(stopping)
        self._loop_tasks = [asyncio.create_task(loop, name=name) for name, loop in loops.items()]
        self._relay_task = asyncio.create_task(services.relay.run(stopping), name="outbox-relay")
        log.info(
            "chat server listening",
            address=settings.grpc_address,
            port=self.port,
            metrics_port=self.metrics_port or None,
        )
        return self.port

    async def _after_tenants_load(self, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run a queue once stored tenants are read: before, a job of a stored tenant would
        find no credentials and fail for good."""
        loaded = asyncio.create_task(self._services.tenants.wait_loaded())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait((loaded, stopping), return_when=asyncio.FIRST_COMPLETED)
        for task in (loaded, stopping):
            task.cancel()
        if not self._stopping.is_set():
            await run(self._stopping)

    @property
    def stream_subscribers(self) -> int:
        """Open StreamConversationEvents calls on this server."""
        return self._services.stores.hub.subscriber_count

    async def stop(self) -> None:
        """Report NOT_SERVING, drain in-flight calls within the grace period, close clients.
        Calling it again does nothing."""
        if self._stopping.is_set():
            return
        services = self._services
        log.info("shutting down", grace_seconds=self._settings.shutdown_grace_seconds)
        self._stopping.set()
        if self._monitor_task is not None:
            await finish_task(self._monitor_task)
        await self._health.enter_graceful_shutdown()
        services.stores.hub.end_streams()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        for task in self._loop_tasks:
            # Replies in hand are stored; unclaimed jobs wait in MongoDB for the next process.
            await finish_task(task)
        if self._relay_task is not None:
            # After the calls: their events are committed; what is not yet published waits in
            # the outbox for the next start (or another process's relay).
            services.relay.wake()
            await finish_task(self._relay_task)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if services.responder_channel is not None:
            await services.responder_channel.close(None)
        await services.actions.close()
        await services.media_fetcher.close()
        await services.stores.hub.close()
        await self._clients.close()
        log.info("stopped")


def _add_servicers(
    server: grpc.aio.Server, services: Services, health: health_aio.HealthServicer
) -> None:
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(
            messages=services.messages,
            conversations=services.conversations,
            streams=services.streams,
            media=services.media,
            actions=services.actions,
            requests=services.requests,
        ),
        server,
    )
    session_service_pb2_grpc.add_SessionServiceServicer_to_server(
        SessionServicer(sessions=services.sessions, requests=services.requests), server
    )
    tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(admin=services.tenant_admin), server
    )
    ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
        IngestServicer(ingest=services.ingest), server
    )
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(
        DeliveryServicer(
            deliveries=services.stores.deliveries,
            requests=services.requests,
            clock=utc_now,
            channels=services.channels,
            tenants=services.tenants,
            on_requeue=services.delivery.wake,
        ),
        server,
    )
    analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(
        AnalyticsServicer(analytics=services.stores.analytics), server
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(audit=services.stores.audit), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVED_SERVICES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
