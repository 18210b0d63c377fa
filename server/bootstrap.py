"""Composition root: creates every client inside the running loop and wires the server.

Nothing here runs at import time. ``create_resources`` opens the clients, ``build_server``
assembles the gRPC server around them, and ``ChatServer`` owns start-up and the graceful
shutdown order (stop accepting, drain in-flight calls, flush Kafka, close clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import redis.asyncio as redis
import structlog
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc

# grpc-stubs predates the asyncio health servicer, which grpcio-health-checking ships as `aio`.
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.exceptions import RedisError

from chat.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    chat_service_pb2,
    chat_service_pb2_grpc,
    common_pb2,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from server.api.analytics import AnalyticsServicer
from server.api.audit import AuditServicer
from server.api.chat import ChatServicer
from server.api.delivery import DeliveryServicer
from server.api.ingest import IngestServicer
from server.api.sessions import SessionServicer
from server.api.tenants import TenantServicer
from server.auth.jwks import JwksKeySource
from server.auth.scopes import REQUIRED_SCOPES
from server.auth.tokens import TokenVerifier, load_public_key
from server.channels.factory import ChannelFactory
from server.channels.teams import TeamsChannel
from server.domain.clock import utc_now
from server.events.publisher import KafkaEventPublisher
from server.events.relay import OutboxRelay
from server.health import Dependency, HealthMonitor
from server.interceptors.chain import ChainDependencies, build_interceptors
from server.metrics import Metrics
from server.processors.content import ContentProcessor
from server.processors.fetch import HttpMediaFetcher
from server.processors.media import MediaProcessor
from server.processors.text import TextProcessor
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import MongoAuditLog
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.conversations import MongoConversationRepository
from server.repositories.deliveries import MongoDeliveries
from server.repositories.idempotency import MongoIdempotencyStore
from server.repositories.ingest import MongoIngestLog, MongoReplyJobs
from server.repositories.live import LiveHub, RedisLiveEvents
from server.repositories.locks import MongoLease
from server.repositories.media import GridFsMediaStore
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Transactions, create_indexes
from server.repositories.outbox import MongoOutbox
from server.repositories.rate_limits import RedisRateLimiter
from server.repositories.receipts import MongoEarlyReceipts
from server.repositories.secrets import SecretBox
from server.repositories.sessions import RedisSessionStore
from server.repositories.tenants import MongoTenantStore, TenantDirectory
from server.repositories.tenants_file import load_tenants
from server.services.active_conversations import ActiveConversations
from server.services.conversations import ConversationService
from server.services.delivery import DeliveryWorker
from server.services.delivery_guards import MIN_SAFE_LEASE_SECONDS, DeliveryPolicy, RateHolds
from server.services.event_writer import EventWriter
from server.services.external_responder import GrpcResponder
from server.services.ingest import IngestService
from server.services.messages import MessageService
from server.services.platform_actions import PlatformActions
from server.services.platform_media import InboundMediaResolver, PlatformMediaSource
from server.services.receipts import Receipts
from server.services.replies import ReplyWorker
from server.services.responder import Responder, RuleBasedResponder
from server.services.sessions import SessionService
from server.services.streams import QuietLiveEvents, StreamService
from server.services.tenants import TenantAdmin
from server.settings import Settings

log = structlog.get_logger("chat.server")

MAX_METADATA_BYTES = 64 * 1024
MAX_REQUEST_BYTES = 25 * 1024 * 1024


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
        (analytics_service_pb2, "AnalyticsService"),
        (audit_service_pb2, "AuditService"),
    )
)


@dataclass(slots=True)
class Resources:
    """The process's clients, created once inside the event loop and shared."""

    mongo: AsyncMongoClient[dict[str, Any]]
    database: AsyncDatabase[dict[str, Any]]
    redis: redis.Redis
    publisher: KafkaEventPublisher
    http: aiohttp.ClientSession
    tenants: TenantDirectory
    secrets: SecretBox | None

    async def close(self) -> None:
        """Flush the Kafka producer first (it may still hold events), then close the rest;
        one failing close does not keep the others open."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.http.close)
            stack.push_async_callback(self.mongo.close)
            stack.push_async_callback(self.tenants.close)
            stack.push_async_callback(self.redis.aclose)
            stack.push_async_callback(self.publisher.close)


async def create_resources(settings: Settings, *, needs_tenants: bool = True) -> Resources:
    """Open the clients. None of them needs its server to be up yet."""
    file_tenants = load_tenants(settings.tenants_file) if settings.tenants_file else {}
    # The worker (needs_tenants=False) reads no tenant, so it needs no key.
    secrets = (
        SecretBox.from_file(settings.tenant_secrets_key_file)
        if settings.tenant_secrets_key_file and needs_tenants
        else None
    )
    if not file_tenants and secrets is None and needs_tenants:
        log.warning(
            "no tenants configured; set CHAT_TENANTS_FILE, or CHAT_TENANT_SECRETS_KEY_FILE "
            "to create tenants with TenantService"
        )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongodb_uri, tz_aware=True, appname="chat-server", serverSelectionTimeoutMS=5000
    )
    database = mongo[settings.mongodb_database]
    return Resources(
        mongo=mongo,
        database=database,
        redis=redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5),
        publisher=KafkaEventPublisher(bootstrap_servers=settings.kafka_bootstrap),
        # One pooled HTTP client per process, for signing keys and the platforms' APIs; its
        # deadline is a platform send's (a send that times out is retried).
        http=aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.delivery_send_timeout_seconds)
        ),
        tenants=TenantDirectory(
            file_tenants=file_tenants,
            store=MongoTenantStore(database=database, secrets=secrets),
        ),
        secrets=secrets,
    )


def build_verifier(settings: Settings, http: aiohttp.ClientSession) -> TokenVerifier:
    """The token verifier for the configured key source."""
    jwt_settings = settings.jwt
    return TokenVerifier(
        settings=jwt_settings,
        jwks=JwksKeySource(url=jwt_settings.jwks_url, http=http) if jwt_settings.jwks_url else None,
        public_key=load_public_key(jwt_settings.public_key_file)
        if jwt_settings.public_key_file
        else None,
    )


def _dependencies(resources: Resources) -> list[Dependency]:
    indexed = False

    async def ping_mongo() -> None:
        nonlocal indexed
        await resources.mongo.admin.command("ping")
        if not indexed:
            # Unique indexes carry invariants (one active conversation per user and channel,
            # idempotency): the server reports NOT_SERVING until they exist.
            await create_indexes(resources.database)
            indexed = True
        if not resources.tenants.loaded:
            # Until stored tenants are read, their callers would be refused as unknown.
            raise RuntimeError("stored tenants not loaded yet")

    async def ping_redis() -> None:
        await resources.redis.ping()

    return [
        Dependency("mongodb", ping_mongo, required=True),
        Dependency("redis", ping_redis, required=True),
        Dependency("kafka", resources.publisher.probe, required=False),
    ]


class ChatServer:
    """The gRPC server with its health monitor; start, then stop exactly once."""

    def __init__(
        self,
        *,
        settings: Settings,
        resources: Resources,
        required_scopes: Mapping[str, str] = REQUIRED_SCOPES,
        extra_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = (),
    ) -> None:
        self._settings = settings
        self._resources = resources
        self.metrics = Metrics()
        self._metrics_runner: web.AppRunner | None = None
        self.metrics_port = 0
        self._limiter = RedisRateLimiter(client=resources.redis)
        chain = ChainDependencies(
            verifier=build_verifier(settings, resources.http),
            tenants=resources.tenants,
            limiter=self._limiter,
            rate_limits=settings.rate_limits,
            metrics=self.metrics,
            required_scopes=required_scopes,
        )
        self._server = grpc.aio.server(
            interceptors=build_interceptors(chain),
            # One process per port unless CHAT_WORKERS asks for more: without this, a second
            # server started by mistake would silently share the port.
            options=[
                ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
                # Above gRPC's 8 KiB default, so an oversized token reaches the auth interceptor
                # and gets UNAUTHENTICATED/TOKEN_TOO_LARGE instead of a bare transport error.
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                # Inline media uploads (MediaContent.data) of up to 20 MiB, with room for the rest.
                ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ],
        )
        self._health = health_aio.HealthServicer()
        # The slowest send: an upload and a few parts, each up to the send timeout.
        if settings.delivery_lease_seconds < max(
            MIN_SAFE_LEASE_SECONDS, 6 * settings.delivery_send_timeout_seconds
        ):
            log.warning(
                "CHAT_DELIVERY_LEASE_SECONDS is shorter than the slowest send: a live process "
                "may lose a delivery to another mid-send, which then sends it twice",
                lease_seconds=settings.delivery_lease_seconds,
            )
        self._monitor = HealthMonitor(
            servicer=self._health,
            dependencies=_dependencies(resources),
            service_names=SERVED_SERVICES,
            interval_seconds=settings.health_check_interval_seconds,
        )
        self._monitor_task: asyncio.Task[None] | None = None
        # One outbox and one transaction runner, shared by the relay and every service.
        self._outbox = MongoOutbox(database=resources.database)
        self._transactions = Transactions(client=resources.mongo)
        self._relay = OutboxRelay(
            outbox=self._outbox,
            publisher=resources.publisher,
            lease=MongoLease(
                database=resources.database,
                name="outbox-relay",
                owner=uuid.uuid4().hex,
                # Well beyond the slowest relay iteration (a publish is bounded at 15 s).
                ttl=dt.timedelta(seconds=60),
            ),
        )
        self._relay_task: asyncio.Task[None] | None = None
        self._responder_channel: grpc.aio.Channel | None = None
        self._media_fetcher = HttpMediaFetcher(
            timeout_seconds=settings.media_fetch_timeout_seconds,
            allow_private=settings.media_fetch_allow_private,
        )
        self._sweep_task: asyncio.Task[None] | None = None
        self._replies_task: asyncio.Task[None] | None = None
        self._delivery_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._events = EventWriter(
            outbox=self._outbox,
            transactions=self._transactions,
            on_events=self._relay.wake,
        )
        self._session_store = RedisSessionStore(
            client=resources.redis, ttl_seconds=settings.session_ttl_seconds
        )
        self._session_service = SessionService(sessions=self._session_store, events=self._events)
        self._hub = LiveHub(client=resources.redis, queue_limit=settings.stream_queue_limit)
        self._conversation_cache = RedisConversationCache(client=resources.redis)
        self._live = QuietLiveEvents(
            RedisLiveEvents(
                client=resources.redis,
                cache=self._conversation_cache,
                sessions=self._session_store,
            )
        )
        self.port = 0
        self._register()
        if extra_handlers:
            self._server.add_generic_rpc_handlers(tuple(extra_handlers))

    def _register(self) -> None:
        chat_service_pb2_grpc.add_ChatServiceServicer_to_server(self._chat_servicer(), self._server)
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(sessions=self._session_service), self._server
        )
        tenant_service_pb2_grpc.add_TenantServiceServicer_to_server(
            TenantServicer(
                admin=TenantAdmin(
                    store=MongoTenantStore(
                        database=self._resources.database, secrets=self._resources.secrets
                    ),
                    directory=self._resources.tenants,
                    transactions=self._transactions,
                    idempotency=self._idempotency,
                    clock=utc_now,
                )
            ),
            self._server,
        )
        ingest_service_pb2_grpc.add_IngestServiceServicer_to_server(
            IngestServicer(ingest=self._ingest), self._server
        )
        delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(
            DeliveryServicer(
                deliveries=self._deliveries,
                idempotency=self._idempotency,
                clock=utc_now,
                channels=self._channels,
                tenants=self._resources.tenants,
                on_requeue=self._delivery.wake,
            ),
            self._server,
        )
        database = self._resources.database
        analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server(
            AnalyticsServicer(analytics=MongoAnalytics(database=database)), self._server
        )
        audit_service_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(audit=MongoAuditLog(database=database)), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                *SERVED_SERVICES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
        )

    def _responder(self, messages: MongoMessageRepository) -> Responder:
        """The external ResponderService when CHAT_RESPONDER_TARGET is set, else the rules."""
        if not self._settings.responder_target:
            return RuleBasedResponder()
        self._responder_channel = grpc.aio.insecure_channel(self._settings.responder_target)
        return GrpcResponder(
            channel=self._responder_channel,
            messages=messages,
            timeout_seconds=self._settings.responder_timeout_seconds,
        )

    def _chat_servicer(self) -> ChatServicer:
        database = self._resources.database
        conversations = MongoConversationRepository(database=database)
        messages = MongoMessageRepository(database=database)
        outbox, transactions = self._outbox, self._transactions
        media_store = GridFsMediaStore(database=database)
        idempotency = MongoIdempotencyStore(database=database)
        self._idempotency = idempotency
        media = MediaProcessor(store=media_store, fetcher=self._media_fetcher)
        content = ContentProcessor(
            text=TextProcessor(default_phone_region=self._settings.phone_default_region),
            media=media,
        )
        deliveries = MongoDeliveries(database=database)
        self._deliveries = deliveries
        channels = ChannelFactory.for_platforms(
            http=self._resources.http, endpoints=self._settings.platforms
        )
        self._channels = channels
        teams = channels.get(common_pb2.CHANNEL_TYPE_TEAMS)
        assert isinstance(teams, TeamsChannel)  # noqa: S101 - for_platforms registers it
        holds = RateHolds()
        receipts = Receipts(
            messages=messages,
            early=MongoEarlyReceipts(database=database),
            outbox=outbox,
            transactions=transactions,
            live=self._live,
            on_events=self._relay.wake,
        )
        self._actions = PlatformActions(
            channels=channels, tenants=self._resources.tenants, messages=messages, holds=holds
        )
        self._delivery = DeliveryWorker(
            deliveries=deliveries,
            messages=messages,
            media=media_store,
            channels=channels,
            tenants=self._resources.tenants,
            outbox=outbox,
            transactions=transactions,
            live=self._live,
            pacer=self._limiter,
            clock=utc_now,
            policy=DeliveryPolicy(
                max_attempts=self._settings.delivery_max_attempts,
                base_delay_seconds=self._settings.delivery_base_delay_seconds,
                lease_seconds=self._settings.delivery_lease_seconds,
                breaker_threshold=self._settings.delivery_breaker_threshold,
                breaker_open_seconds=self._settings.delivery_breaker_open_seconds,
            ),
            on_events=self._relay.wake,
            on_batch=self.metrics.group_commit_batch.labels(call="delivery").observe,
            holds=holds,
            receipts=receipts,
        )
        active = ActiveConversations()
        pipeline = MessageService(
            conversations=conversations,
            active=active,
            messages=messages,
            sessions=self._session_store,
            outbox=outbox,
            idempotency=idempotency,
            transactions=transactions,
            content=content,
            responder=self._responder(messages),
            events=self._events,
            live=self._live,
            deliveries=deliveries,
            on_events=self._relay.wake,
            on_delivery=self._delivery.wake,
            on_batch=self.metrics.group_commit_batch.labels(call="send_message").observe,
        )
        jobs = MongoReplyJobs(database=database)
        self._replies = ReplyWorker(
            jobs=jobs,
            pipeline=pipeline,
            conversations=conversations,
            messages=messages,
            sessions=self._session_store,
            outbox=outbox,
            transactions=transactions,
            live=self._live,
            clock=utc_now,
            media=InboundMediaResolver(
                source=PlatformMediaSource(
                    fetcher=self._media_fetcher,
                    endpoints=self._settings.platforms,
                    teams_token=teams.token,
                ),
                media=media,
                tenants=self._resources.tenants,
            ),
            deliveries=deliveries,
            actions=self._actions,
            on_events=self._relay.wake,
            on_delivery=self._delivery.wake,
            on_batch=self.metrics.group_commit_batch.labels(call="reply").observe,
        )
        self._ingest = IngestService(
            messages_service=pipeline,
            conversations=conversations,
            messages=messages,
            sessions=self._session_store,
            outbox=outbox,
            transactions=transactions,
            content=content,
            ingest_log=MongoIngestLog(database=database),
            receipts=receipts,
            reply_jobs=jobs,
            live=self._live,
            clock=utc_now,
            on_events=self._relay.wake,
            on_reply_job=self._replies.wake,
            on_batch=self.metrics.group_commit_batch.labels(call="ingest").observe,
        )
        return ChatServicer(
            messages=pipeline,
            conversations=ConversationService(
                conversations=conversations,
                messages=messages,
                sessions=self._session_service,
                outbox=outbox,
                transactions=transactions,
                live=self._live,
                cache=self._conversation_cache,
                active=active,
                events=self._events,
                on_events=self._relay.wake,
            ),
            streams=StreamService(
                conversations=conversations,
                messages=messages,
                subscriptions=self._hub,
                live=self._live,
                outbox=outbox,
                idempotency=idempotency,
                transactions=transactions,
                clock=utc_now,
                on_events=self._relay.wake,
            ),
            actions=self._actions,
        )

    async def _sweep_sessions(self) -> None:
        """Report expired sessions (SessionEnded, once across every server process)."""
        while not self._stopping.is_set():
            try:
                await self._session_service.expire_due()
            except Exception:
                log.exception("session sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.session_sweep_seconds)

    async def start(self) -> int:
        """Probe dependencies once, bind, start serving; returns the bound port."""
        if self._settings.metrics_address:
            self._metrics_runner = await self.metrics.serve(self._settings.metrics_address)
            self.metrics_port = _bound_port(self._metrics_runner)
        await self._resources.tenants.start()
        with contextlib.suppress(TimeoutError):
            # A moment for stored tenants to load, so the first check can report SERVING.
            await asyncio.wait_for(self._resources.tenants.wait_loaded(), 2)
        await self._monitor.check_once()
        try:
            await self._limiter.load()
        except (RedisError, OSError) as exc:
            log.warning("rate-limit script not preloaded", error=repr(exc))
        self.port = self._server.add_insecure_port(self._settings.grpc_address)
        await self._server.start()
        if self._responder_channel is not None:
            # Connect now: the first message's reply would otherwise pay for the connection
            # within the responder's deadline, and could get the fallback text.
            self._responder_channel.get_state(try_to_connect=True)
        self._monitor_task = asyncio.create_task(
            self._monitor.run(self._stopping), name="health-monitor"
        )
        self._relay_task = asyncio.create_task(self._relay.run(self._stopping), name="outbox-relay")
        self._sweep_task = asyncio.create_task(self._sweep_sessions(), name="session-sweep")
        self._replies_task = asyncio.create_task(
            self._after_tenants_load(self._replies.run), name="reply-queue"
        )
        self._delivery_task = asyncio.create_task(
            self._after_tenants_load(self._delivery.run), name="delivery-queue"
        )
        log.info(
            "chat server listening",
            address=self._settings.grpc_address,
            port=self.port,
            metrics_port=self.metrics_port or None,
        )
        return self.port

    async def _after_tenants_load(self, run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run a queue once stored tenants are read: before, a job of a stored tenant would
        find no credentials and fail for good."""
        loaded = asyncio.create_task(self._resources.tenants.wait_loaded())
        stopping = asyncio.create_task(self._stopping.wait())
        await asyncio.wait((loaded, stopping), return_when=asyncio.FIRST_COMPLETED)
        for task in (loaded, stopping):
            task.cancel()
        if not self._stopping.is_set():
            await run(self._stopping)

    @property
    def stream_subscribers(self) -> int:
        """Open StreamConversationEvents calls on this server."""
        return self._hub.subscriber_count

    async def stop(self) -> None:
        """Report NOT_SERVING, drain in-flight calls within the grace period, close clients.
        Calling it again does nothing."""
        if self._stopping.is_set():
            return
        log.info("shutting down", grace_seconds=self._settings.shutdown_grace_seconds)
        self._stopping.set()
        if self._monitor_task is not None:
            await _finish(self._monitor_task)
        await self._health.enter_graceful_shutdown()
        self._hub.end_streams()
        await self._server.stop(self._settings.shutdown_grace_seconds)
        if self._sweep_task is not None:
            await _finish(self._sweep_task)
        if self._replies_task is not None:
            # Replies in hand are stored; unclaimed jobs wait in MongoDB for the next process.
            await _finish(self._replies_task)
        if self._delivery_task is not None:
            await _finish(self._delivery_task)
        if self._relay_task is not None:
            # After the calls: their events are committed; what is not yet published waits in
            # the outbox for the next start (or another process's relay).
            self._relay.wake()
            await _finish(self._relay_task)
        if self._metrics_runner is not None:
            await self._metrics_runner.cleanup()
        if self._responder_channel is not None:
            await self._responder_channel.close(None)
        await self._actions.close()
        await self._media_fetcher.close()
        await self._hub.close()
        await self._resources.close()
        log.info("stopped")


async def _finish(task: asyncio.Task[None], seconds: float = 20.0) -> None:
    """Let a background loop end at its next safe point; cancel it only if it hangs."""
    try:
        await asyncio.wait_for(asyncio.shield(task), seconds)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _bound_port(runner: web.AppRunner) -> int:
    address = runner.addresses[0]
    return int(address[1])
