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
from server.repositories.locks import MongoLease
from server.repositories.stores import Stores, is_outage, open_stores
from server.services.active_conversations import ActiveConversations
from server.services.composing import ReplyComposer
from server.services.conversations import ConversationService
from server.services.delivery import DeliveryWorker
from server.services.delivery_guards import DeliveryPolicy, RateHolds, warn_if_lease_unsafe
from server.services.event_writer import EventWriter
from server.services.external_responder import responder_for
from server.services.idempotency import IdempotentRequests
from server.services.ingest import IngestService
from server.services.ingest_inbox import InboxWorker
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.message_media import MessageMediaService
from server.services.messages import MessageService
from server.services.opening import ConversationOpener
from server.services.platform_actions import PlatformActions
from server.services.platform_media import InboundMediaResolver, PlatformMediaSource
from server.services.receipts import Receipts
from server.services.replies import ReplyWorker
from server.services.sessions import SessionService
from server.services.streams import StreamService
from server.services.tenants import TenantAdmin
from server.settings import Settings
from server.tenancy.directory import TenantDirectory

log = structlog.get_logger("chat.server")


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    """Everything the gRPC API serves and every loop the server runs, wired."""

    stores: Stores
    tenants: TenantDirectory
    channels: ChannelFactory
    requests: IdempotentRequests
    messages: MessageService
    conversations: ConversationService
    streams: StreamService
    media: MessageMediaService
    sessions: SessionService
    ingest: IngestService
    tenant_admin: TenantAdmin
    actions: PlatformActions
    #: The loops grpc_server.py starts and stops.
    relay: OutboxRelay
    replies: ReplyWorker
    delivery: DeliveryWorker
    inbox: InboxWorker
    #: Closed at the end: the media fetcher's HTTP client, and the responder's channel.
    media_fetcher: HttpMediaFetcher
    responder_channel: grpc.aio.Channel | None


def bootstrap(*, settings: Settings, clients: Clients, metrics: Metrics) -> Services:
    """Wire the services over the clients."""
    warn_if_lease_unsafe(settings.delivery_lease_seconds, settings.delivery_send_timeout_seconds)
    tenants = clients.tenants
    batch = metrics.group_commit_batch

    # Stores: one outbox and one transaction runner, shared by the relay and every service
    stores = open_stores(
        mongo=clients.mongo,
        database=clients.database,
        client=clients.redis,
        secrets=clients.secrets,
        session_ttl_seconds=settings.session_ttl_seconds,
        stream_queue_limit=settings.stream_queue_limit,
    )
    transactions, outbox, messages = stores.transactions, stores.outbox, stores.messages
    conversations, deliveries = stores.conversations, stores.deliveries
    session_store = stores.sessions
    live = QuietLiveEvents(stores.live)
    requests = IdempotentRequests(store=stores.idempotency)

    # Events: committed with the data, published by the relay
    relay = OutboxRelay(
        outbox=outbox,
        publisher=clients.publisher,
        lease=MongoLease(
            database=clients.database,
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
    media = MediaProcessor(store=stores.media, fetcher=media_fetcher)
    content = ContentProcessor(
        text=TextProcessor(default_phone_region=settings.phone_default_region), media=media
    )
    channels = ChannelFactory.for_platforms(http=clients.http, endpoints=settings.platforms)
    teams = channels.get(common_pb2.CHANNEL_TYPE_TEAMS)
    assert isinstance(teams, TeamsChannel)  # noqa: S101 - for_platforms registers it
    holds = RateHolds()
    actions = PlatformActions(channels=channels, tenants=tenants, messages=messages, holds=holds)
    responder, responder_channel = responder_for(
        settings.responder_target, messages, timeout_seconds=settings.responder_timeout_seconds
    )

    # Conversations, sessions and messages
    sessions = SessionService(sessions=session_store, events=events)
    active = ActiveConversations()
    opener = ConversationOpener(
        conversations=conversations, sessions=session_store, events=events, active=active
    )
    composer = ReplyComposer(responder=responder, content=content, sessions=session_store)
    push = CommittedPush(live=live, sessions=session_store)
    receipts = Receipts(
        messages=messages,
        deliveries=deliveries,
        early=stores.early_receipts,
        outbox=outbox,
        transactions=transactions,
        live=live,
        on_events=relay.wake,
    )

    # The queues: deliveries to the platforms, replies to ingested messages
    delivery = DeliveryWorker(
        deliveries=deliveries,
        messages=messages,
        media=stores.media,
        channels=channels,
        tenants=tenants,
        outbox=outbox,
        transactions=transactions,
        live=live,
        pacer=stores.limiter,
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
        observer=metrics,
    )
    metrics.watch_breakers(delivery.open_breakers)
    replies = ReplyWorker(
        jobs=stores.reply_jobs,
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
        delivery_slots=delivery.reserve,
    )

    # Platform events: applied within IngestEvents, or queued in the inbox and applied after
    ingest = IngestService(
        opener=opener,
        push=push,
        conversations=conversations,
        messages=messages,
        outbox=outbox,
        transactions=transactions,
        content=content,
        ingest_log=stores.ingest_log,
        inbox=stores.ingest_inbox,
        receipts=receipts,
        reply_jobs=stores.reply_jobs,
        live=live,
        clock=utc_now,
        on_events=relay.wake,
        on_reply_job=replies.wake,
        reply_slots=replies.reserve,
        on_batch=batch.labels(call="ingest").observe,
        on_queued=lambda: inbox.wake(),  # noqa: PLW0108 - late bound: the worker comes next
        is_outage=is_outage,
    )
    inbox = InboxWorker(
        inbox=stores.ingest_inbox,
        ingest=ingest,
        clock=utc_now,
        is_outage=is_outage,
        on_applied=lambda outcome, count: metrics.ingest_applied_later.labels(outcome).inc(count),
    )

    # What the API serves
    return Services(
        stores=stores,
        tenants=tenants,
        channels=channels,
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
            cache=stores.cache,
            active=active,
            events=events,
            on_events=relay.wake,
        ),
        streams=StreamService(
            conversations=conversations,
            messages=messages,
            subscriptions=stores.hub,
            live=live,
            outbox=outbox,
            requests=requests,
            transactions=transactions,
            clock=utc_now,
            on_events=relay.wake,
        ),
        media=MessageMediaService(messages=messages, media=stores.media),
        sessions=sessions,
        ingest=ingest,
        tenant_admin=TenantAdmin(
            store=stores.tenants,
            directory=tenants,
            transactions=transactions,
            requests=requests,
            clock=utc_now,
        ),
        actions=actions,
        relay=relay,
        replies=replies,
        delivery=delivery,
        inbox=inbox,
        media_fetcher=media_fetcher,
        responder_channel=responder_channel,
    )
