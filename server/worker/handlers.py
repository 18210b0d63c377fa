"""The worker's handlers: analytics, users, audit, notification and cache.

Each applies an event at most once: its effect and its applied-event record are written in
one MongoDB transaction (see MongoHandledEvents.apply_once).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pymongo.asynchronous.client_session import AsyncClientSession

from chat.v1 import common_pb2, events_pb2
from server.repositories.analytics import MongoAnalytics
from server.repositories.audit import AuditRecord, MongoAuditLog
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.handled import MongoHandledEvents
from server.repositories.users import MongoUserRepository
from server.worker.notifier import Notifier
from server.worker.router import PermanentError, Registration

_SUCCESS = (common_pb2.DELIVERY_STATUS_DELIVERED, common_pb2.DELIVERY_STATUS_READ)


def occur_time(envelope: events_pb2.EventEnvelope) -> dt.datetime:
    """When the event happened (UTC)."""
    return envelope.occur_time.ToDatetime(tzinfo=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AnalyticsHandler:
    """Per-minute figures: messages in and out per channel, bot response time, conversation
    durations, delivery success."""

    name = "analytics"
    event_types = frozenset(
        {"message_received", "message_sent", "conversation_ended", "message_delivered"}
    )

    def __init__(self, *, analytics: MongoAnalytics, handled: MongoHandledEvents) -> None:
        self._analytics = analytics
        self._handled = handled

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        kind = envelope.WhichOneof("payload")
        tenant_id, moment = envelope.tenant_id, occur_time(envelope)
        if kind == "message_delivered":
            await self._delivered(envelope)
            return
        maxima: dict[str, float] = {}
        if kind == "message_received":
            channel = envelope.message_received.message.channel
            increments: dict[str, float] = {"messages_in": 1}
        elif kind == "message_sent":
            sent = envelope.message_sent
            channel = sent.message.channel
            increments = {"messages_out": 1}
            if sent.HasField("response_time"):
                millis = sent.response_time.ToTimedelta().total_seconds() * 1000
                increments |= {"responses": 1, "response_time_sum_ms": millis}
                maxima = {"response_time_max_ms": millis}
        elif kind == "conversation_ended":
            ended = envelope.conversation_ended
            channel = ended.conversation.channel
            increments = {
                "conversations_ended": 1,
                "conversation_duration_sum_seconds": ended.duration.ToTimedelta().total_seconds(),
            }
        else:
            raise PermanentError(f"analytics does not take {kind}")

        async def add(tx: AsyncClientSession) -> None:
            await self._analytics.add(
                tenant_id,
                moment=moment,
                channel=channel,
                increments=increments,
                maxima=maxima,
                tx=tx,
            )

        await self._handled.apply_once(self.name, envelope.event_id, add, now=_now())

    async def _delivered(self, envelope: events_pb2.EventEnvelope) -> None:
        delivered = envelope.message_delivered
        if delivered.status in _SUCCESS:
            # A message counts once as a success, at its first DELIVERED or READ report.
            first_key = f"delivered:{envelope.tenant_id}:{delivered.message_id}"
            if await self._handled.seen(self.name, first_key):
                increments: dict[str, float] = {}
            else:
                increments = {"deliveries_succeeded": 1}
        elif delivered.status == common_pb2.DELIVERY_STATUS_FAILED:
            first_key, increments = "", {"deliveries_failed": 1}
        else:
            return  # QUEUED or SENT: not an outcome

        async def add(tx: AsyncClientSession) -> None:
            if not increments:
                return
            if first_key:
                await self._handled.mark(self.name, first_key, now=_now(), tx=tx)
            await self._analytics.add(
                envelope.tenant_id,
                moment=occur_time(envelope),
                channel=delivered.channel,
                increments=increments,
                tx=tx,
            )

        await self._handled.apply_once(self.name, envelope.event_id, add, now=_now())


class UserActivityHandler:
    """Users' records: created at their first message, with their last activity and their
    message count. Kept here rather than in the calls that store messages, which then write
    one document less per message; the records follow within the worker's lag."""

    name = "users"
    event_types = frozenset({"message_received"})

    def __init__(self, *, users: MongoUserRepository, handled: MongoHandledEvents) -> None:
        self._users = users
        self._handled = handled

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        message = envelope.message_received.message
        if not message.sender_id:
            raise PermanentError("a received message without its sender")

        async def record(tx: AsyncClientSession) -> None:
            await self._users.record_activity(
                envelope.tenant_id,
                channel=message.channel,
                user_id=message.sender_id,
                now=message.create_time.ToDatetime(tzinfo=dt.UTC),
                tx=tx,
            )

        await self._handled.apply_once(self.name, envelope.event_id, record, now=_now())


def audit_record(envelope: events_pb2.EventEnvelope) -> AuditRecord | None:
    """What the audit log says about an event (None: the event is not audited)."""
    described = _audit_fields(envelope)
    if described is None:
        return None
    action, resource_type, resource_id, detail = described
    return AuditRecord(
        occur_time=occur_time(envelope),
        actor_id=envelope.actor_id,
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        detail=detail,
        event_id=envelope.event_id,
    )


def _audit_fields(envelope: events_pb2.EventEnvelope) -> tuple[str, str, str, str] | None:
    """(action, resource type, resource id, detail) of an audited event."""
    kind = envelope.WhichOneof("payload")
    if kind == "conversation_started":
        conversation = envelope.conversation_started.conversation
        channel = common_pb2.ChannelType.Name(conversation.channel)
        return "conversation.started", "conversation", conversation.id, channel
    if kind == "message_received":
        message = envelope.message_received.message
        return "message.received", "message", message.id, f"conversation {message.conversation_id}"
    if kind == "conversation_ended":
        ended = envelope.conversation_ended
        return "conversation.closed", "conversation", ended.conversation.id, ended.reason
    if kind == "session_ended":
        session_ended = envelope.session_ended
        reason = events_pb2.SessionEndReason.Name(session_ended.reason)
        return "session.ended", "session", session_ended.session.id, reason
    if kind == "data_accessed":
        accessed = envelope.data_accessed
        action = {
            events_pb2.DATA_ACCESS_ACTION_SEARCH: "data.searched",
            events_pb2.DATA_ACCESS_ACTION_EXPORT: "data.exported",
        }.get(accessed.action, "data.accessed")
        return action, accessed.resource_type, accessed.resource_id, accessed.detail
    return None


class AuditHandler:
    """Appends user activity and data access to the tenant's hash-chained audit log."""

    name = "audit"
    event_types = frozenset(
        {
            "conversation_started",
            "message_received",
            "conversation_ended",
            "session_ended",
            "data_accessed",
        }
    )

    def __init__(self, *, audit: MongoAuditLog, handled: MongoHandledEvents) -> None:
        self._audit = audit
        self._handled = handled

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        record = audit_record(envelope)
        if record is None:
            raise PermanentError(f"audit does not take {envelope.WhichOneof('payload')}")
        if not envelope.tenant_id:
            raise PermanentError("event without a tenant")

        async def append(tx: AsyncClientSession) -> None:
            await self._audit.append(envelope.tenant_id, record, tx=tx)

        await self._handled.apply_once(self.name, envelope.event_id, append, now=_now())


class NotificationHandler:
    """Watches delivery outcomes and alerts when a tenant's failure rate crosses the
    threshold (the notifier also watches dead letters and consumer lag)."""

    name = "notification"
    event_types = frozenset({"message_delivered"})

    def __init__(self, *, notifier: Notifier) -> None:
        self._notifier = notifier

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        # Reading figures and sending an alert at most once per interval is idempotent by
        # itself: a redelivered event cannot alert twice within the interval.
        if envelope.message_delivered.status == common_pb2.DELIVERY_STATUS_FAILED:
            await self._notifier.check_failure_rate(envelope.tenant_id, now=_now())


class CacheHandler:
    """Keeps cached conversation state in Redis fresh: a cached conversation is replaced by a
    newer state from its events, never by an older one, and is never created here (only a
    read creates it), so a late event cannot bring back a stale entry."""

    name = "cache"
    event_types = frozenset({"conversation_started", "conversation_updated", "conversation_ended"})

    def __init__(self, *, cache: RedisConversationCache) -> None:
        self._cache = cache

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        kind = envelope.WhichOneof("payload")
        conversation = {
            "conversation_started": envelope.conversation_started.conversation,
            "conversation_updated": envelope.conversation_updated.conversation,
            "conversation_ended": envelope.conversation_ended.conversation,
        }.get(kind or "")
        if conversation is None or not conversation.id:
            raise PermanentError(f"cache does not take {kind}")
        await self._cache.refresh(envelope.tenant_id, conversation)


def registrations(
    *,
    analytics: AnalyticsHandler,
    users: UserActivityHandler,
    audit: AuditHandler,
    notification: NotificationHandler,
    cache: CacheHandler,
) -> Sequence[Registration]:
    """Which handler takes which event types: the one table."""
    return [
        Registration(analytics, AnalyticsHandler.event_types),
        Registration(users, UserActivityHandler.event_types),
        Registration(audit, AuditHandler.event_types),
        Registration(notification, NotificationHandler.event_types),
        Registration(cache, CacheHandler.event_types),
    ]
