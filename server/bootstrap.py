"""The composition root: what exists in a chat-server process, and what each part is given.

``bootstrap`` reads top to bottom as that list, from the stores up to the services the API
serves, and returns them in one typed object. It creates no client (server/clients.py opens
them) and starts nothing (server/grpc_server.py owns start-up and the stop order).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import grpc
import structlog

from chat.v1 import common_pb2
from server.channels.factory import ChannelFactory
from server.channels.teams import TeamsChannel
from server.clients import Clients
from server.domain.clock import utc_now
from server.metrics import Metrics
from server.processors.content import ContentProcessor
from server.processors.fetch import HttpMediaFetcher
from server.processors.media import MediaProcessor
from server.processors.text import TextProcessor
from server.relay.relay import OutboxRelay
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
from server.repositories.mongo import Transactions
from server.repositories.outbox import MongoOutbox
from server.repositories.rate_limits import RedisRateLimiter
from server.repositories.receipts import MongoEarlyReceipts
from server.repositories.sessions import RedisSessionStore
from server.repositories.tenants import MongoTenantStore
from server.services.active_conversations import ActiveConversations
from server.services.composing import ReplyComposer
from server.services.conversations import ConversationService
from server.services.delivery import DeliveryWorker
from server.services.delivery_guards import MIN_SAFE_LEASE_SECONDS, DeliveryPolicy, RateHolds
from server.services.event_writer import EventWriter
from server.services.external_responder import GrpcResponder
from server.services.idempotency import IdempotentRequests
from server.services.ingest import IngestService
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.messages import MessageService
from server.services.opening import ConversationOpener
from server.services.platform_actions import PlatformActions
from server.services.platform_media import InboundMediaResolver, PlatformMediaSource
from server.services.receipts import Receipts
from server.services.replies import ReplyWorker
from server.services.responder import Responder, RuleBasedResponder
from server.services.sessions import SessionService
from server.services.streams import StreamService
from server.services.tenants import TenantAdmin
from server.settings import Settings
from server.tenancy.directory import TenantDirectory

log = structlog.get_logger("chat.server")


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """Everything the gRPC API serves and every loop the server runs, wired."""

    tenants: TenantDirectory
    limiter: RedisRateLimiter
    channels: ChannelFactory
    deliveries: MongoDeliveries
    requests: IdempotentRequests
    messages: MessageService
    conversations: ConversationService
    streams: StreamService
    sessions: SessionService
    ingest: IngestService
    tenant_admin: TenantAdmin
    analytics: MongoAnalytics
    audit: MongoAuditLog
    actions: PlatformActions
    #: The loops grpc_server.py starts and stops.
    relay: OutboxRelay
    replies: ReplyWorker
    delivery: DeliveryWorker
    hub: LiveHub
    #: Closed at the end: the media fetcher's HTTP client, and the responder's channel.
    media_fetcher: HttpMediaFetcher
    responder_channel: grpc.aio.Channel | None


def bootstrap(*, settings: Settings, clients: Clients, metrics: Metrics) -> Services:
    """Wire the services over the clients."""
    warn_if_lease_too_short(settings)
    database, tenants = clients.database, clients.tenants
    batch = metrics.group_commit_batch

    # Stores
    transactions = Transactions(client=clients.mongo)
    outbox = MongoOutbox(database=database)
    conversations = MongoConversationRepository(database=database)
    messages = MongoMessageRepository(database=database)
    deliveries = MongoDeliveries(database=database)
    reply_jobs = MongoReplyJobs(database=database)
    media_store = GridFsMediaStore(database=database)
    session_store = RedisSessionStore(
        client=clients.redis, ttl_seconds=settings.session_ttl_seconds
    )
    limiter = RedisRateLimiter(client=clients.redis)
    hub = LiveHub(client=clients.redis, queue_limit=settings.stream_queue_limit)
    cache = RedisConversationCache(client=clients.redis)
    live = QuietLiveEvents(
        RedisLiveEvents(client=clients.redis, cache=cache, sessions=session_store)
    )
    requests = IdempotentRequests(store=MongoIdempotencyStore(database=database))

    # Events: committed with the data, published by the relay
    relay = OutboxRelay(
        outbox=outbox,
        publisher=clients.publisher,
        lease=MongoLease(
            database=database,
            name="outbox-relay",
            owner=uuid.uuid4().hex,
            # Well beyond the slowest relay iteration (a publish is bounded at 15 s).
            ttl=dt.timedelta(seconds=60),
        ),
    )
    events = EventWriter(outbox=outbox, transactions=transactions, on_events=relay.wake)

    # Content and the platforms
    media_fetcher = HttpMediaFetcher(
        timeout_seconds=settings.media_fetch_timeout_seconds,
        allow_private=settings.media_fetch_allow_private,
    )
    media = MediaProcessor(store=media_store, fetcher=media_fetcher)
    content = ContentProcessor(
        text=TextProcessor(default_phone_region=settings.phone_default_region), media=media
    )
    channels = ChannelFactory.for_platforms(http=clients.http, endpoints=settings.platforms)
    teams = channels.get(common_pb2.CHANNEL_TYPE_TEAMS)
    assert isinstance(teams, TeamsChannel)  # noqa: S101 - for_platforms registers it
    holds = RateHolds()
    actions = PlatformActions(channels=channels, tenants=tenants, messages=messages, holds=holds)
    responder, responder_channel = _responder(settings, messages)

    # Conversations, sessions and messages
    sessions = SessionService(sessions=session_store, events=events)
    active = ActiveConversations()
    opener = ConversationOpener(
        conversations=conversations,
        sessions=session_store,
        transactions=transactions,
        events=events,
        active=active,
        on_events=relay.wake,
    )
    composer = ReplyComposer(responder=responder, content=content, sessions=session_store)
    push = CommittedPush(live=live, sessions=session_store)
    receipts = Receipts(
        messages=messages,
        early=MongoEarlyReceipts(database=database),
        outbox=outbox,
        transactions=transactions,
        live=live,
        on_events=relay.wake,
    )

    # The queues: deliveries to the platforms, replies to ingested messages
    delivery = DeliveryWorker(
        deliveries=deliveries,
        messages=messages,
        media=media_store,
        channels=channels,
        tenants=tenants,
        outbox=outbox,
        transactions=transactions,
        live=live,
        pacer=limiter,
        clock=utc_now,
        policy=DeliveryPolicy(
            max_attempts=settings.delivery_max_attempts,
            base_delay_seconds=settings.delivery_base_delay_seconds,
            lease_seconds=settings.delivery_lease_seconds,
            breaker_threshold=settings.delivery_breaker_threshold,
            breaker_open_seconds=settings.delivery_breaker_open_seconds,
        ),
        on_events=relay.wake,
        on_batch=batch.labels(call="delivery").observe,
        holds=holds,
        receipts=receipts,
    )
    replies = ReplyWorker(
        jobs=reply_jobs,
        opener=opener,
        composer=composer,
        push=push,
        conversations=conversations,
        messages=messages,
        outbox=outbox,
        transactions=transactions,
        clock=utc_now,
        media=InboundMediaResolver(
            source=PlatformMediaSource(
                fetcher=media_fetcher, endpoints=settings.platforms, teams_token=teams.token
            ),
            media=media,
            tenants=tenants,
        ),
        deliveries=deliveries,
        actions=actions,
        on_events=relay.wake,
        on_delivery=delivery.wake,
        on_batch=batch.labels(call="reply").observe,
    )

    # What the API serves
    return Services(
        tenants=tenants,
        limiter=limiter,
        channels=channels,
        deliveries=deliveries,
        requests=requests,
        messages=MessageService(
            opener=opener,
            composer=composer,
            push=push,
            requests=requests,
            conversations=conversations,
            messages=messages,
            outbox=outbox,
            transactions=transactions,
            content=content,
            deliveries=deliveries,
            on_events=relay.wake,
            on_delivery=delivery.wake,
            on_batch=batch.labels(call="send_message").observe,
        ),
        conversations=ConversationService(
            conversations=conversations,
            messages=messages,
            sessions=sessions,
            transactions=transactions,
            live=live,
            cache=cache,
            active=active,
            events=events,
            on_events=relay.wake,
        ),
        streams=StreamService(
            conversations=conversations,
            messages=messages,
            subscriptions=hub,
            live=live,
            outbox=outbox,
            requests=requests,
            transactions=transactions,
            clock=utc_now,
            on_events=relay.wake,
        ),
        sessions=sessions,
        ingest=IngestService(
            opener=opener,
            push=push,
            conversations=conversations,
            messages=messages,
            outbox=outbox,
            transactions=transactions,
            content=content,
            ingest_log=MongoIngestLog(database=database),
            receipts=receipts,
            reply_jobs=reply_jobs,
            live=live,
            clock=utc_now,
            on_events=relay.wake,
            on_reply_job=replies.wake,
            on_batch=batch.labels(call="ingest").observe,
        ),
        tenant_admin=TenantAdmin(
            store=MongoTenantStore(database=database, secrets=clients.secrets),
            directory=tenants,
            transactions=transactions,
            requests=requests,
            clock=utc_now,
        ),
        analytics=MongoAnalytics(database=database),
        audit=MongoAuditLog(database=database),
        actions=actions,
        relay=relay,
        replies=replies,
        delivery=delivery,
        hub=hub,
        media_fetcher=media_fetcher,
        responder_channel=responder_channel,
    )


def _responder(
    settings: Settings, messages: MongoMessageRepository
) -> tuple[Responder, grpc.aio.Channel | None]:
    """The external ResponderService when CHAT_RESPONDER_TARGET is set, else the rules; and
    the channel to close at the end."""
    if not settings.responder_target:
        return RuleBasedResponder(), None
    channel = grpc.aio.insecure_channel(settings.responder_target)
    responder = GrpcResponder(
        channel=channel, messages=messages, timeout_seconds=settings.responder_timeout_seconds
    )
    return responder, channel


def warn_if_lease_too_short(settings: Settings) -> None:
    """The slowest send is an upload and a few parts, each up to the send timeout."""
    if settings.delivery_lease_seconds < max(
        MIN_SAFE_LEASE_SECONDS, 6 * settings.delivery_send_timeout_seconds
    ):
        log.warning(
            "CHAT_DELIVERY_LEASE_SECONDS is shorter than the slowest send: a live process "
            "may lose a delivery to another mid-send, which then sends it twice",
            lease_seconds=settings.delivery_lease_seconds,
        )
