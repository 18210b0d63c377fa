"""The documents the database floor writes (bench/floor.py): each one the shape the service
writes for the same record, field for field, so the database stores and indexes the same
bytes. The service's repositories are the model (named beside each builder); the guard test
(tests/integration/test_bench_floor.py) compares the fields, sizes and collections of both.

Payloads are the contract's own messages (chat.v1), built with the generated code, so an
event or a stored message is as large as the service's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from bson import ObjectId

from chat.v1 import common_pb2, events_pb2
from server.events.topics import TOPIC_BY_PAYLOAD

Document = dict[str, Any]

TENANT = "bench"
WEB = common_pb2.CHANNEL_TYPE_WEB
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP
ACTIVE = "ACTIVE"
#: The responder's sender id and its first answer (the service's "Hello! ..." greeting).
BOT = "bot"
GREETING = "Hello! How can I help you today?"
#: The responder's answers are written by the floor's reply stage as this one process.
OWNER = "floor"
LEASE = dt.timedelta(seconds=60)


def conversation(
    *, user_id: str, channel: int, address: str, now: dt.datetime, inbound: int, outbound: int
) -> Document:
    """A new active conversation (repositories/conversations.py insert_active), its counters
    already counting the messages of the transaction that starts it: the floor knows a new
    conversation has no earlier message, so it writes it once, not inserted then updated."""
    count = inbound + outbound
    return {
        "_id": uuid.uuid4().hex,
        "tenant_id": TENANT,
        "user_id": user_id,
        "channel": channel,
        "status": ACTIVE,
        "channel_conversation_id": address,
        "message_count": count,
        "inbound_message_count": inbound,
        "outbound_message_count": outbound,
        "last_sequence": count,
        "create_time": now,
        "update_time": now,
        "last_activity_time": now,
        "metadata": {},
    }


def counters(*, inbound: int, outbound: int, now: dt.datetime) -> Document:
    """The update of a conversation's counters (record_messages_many)."""
    return {
        "$inc": {
            "last_sequence": inbound + outbound,
            "message_count": inbound + outbound,
            "inbound_message_count": inbound,
            "outbound_message_count": outbound,
        },
        "$max": {"update_time": now, "last_activity_time": now},
    }


def conversation_pb(document: Document) -> common_pb2.Conversation:
    """The contract's Conversation of a stored one (for the events that carry it)."""
    found = common_pb2.Conversation(
        id=document["_id"],
        user_id=document["user_id"],
        channel=document["channel"],
        status=common_pb2.CONVERSATION_STATUS_ACTIVE,
        channel_conversation_id=document["channel_conversation_id"],
        message_count=document["message_count"],
        inbound_message_count=document["inbound_message_count"],
        outbound_message_count=document["outbound_message_count"],
        last_sequence=document["last_sequence"],
        metadata=document["metadata"],
    )
    found.create_time.FromDatetime(document["create_time"])
    found.update_time.FromDatetime(document["update_time"])
    found.last_activity_time.FromDatetime(document["last_activity_time"])
    return found


def session_pb(started: common_pb2.Conversation, now: dt.datetime) -> common_pb2.Session:
    """The session a first message starts (kept in Redis; its SessionStarted event is the
    database's part)."""
    session = common_pb2.Session(
        id=uuid.uuid4().hex,
        conversation_id=started.id,
        user_id=started.user_id,
        channel=started.channel,
        status=common_pb2.SESSION_STATUS_ACTIVE,
    )
    session.create_time.FromDatetime(now)
    session.last_activity_time.FromDatetime(now)
    session.expire_time.FromDatetime(now + dt.timedelta(minutes=30))
    return session


def text_message(
    started: Document,
    *,
    sequence: int,
    text: str,
    now: dt.datetime,
    inbound: bool,
    reply_to: str = "",
    platform_message_id: str = "",
    metadata: dict[str, str] | None = None,
) -> common_pb2.Message:
    """A text message of a conversation (domain/messages.py build_message, after processing:
    an inbound one carries the processor's metadata)."""
    message = common_pb2.Message(
        id=uuid.uuid4().hex,
        conversation_id=started["_id"],
        sequence=sequence,
        direction=common_pb2.MESSAGE_DIRECTION_INBOUND
        if inbound
        else common_pb2.MESSAGE_DIRECTION_OUTBOUND,
        type=common_pb2.MESSAGE_TYPE_TEXT,
        channel=started["channel"],
        sender_id=started["user_id"] if inbound else BOT,
        content=common_pb2.Content(text=common_pb2.TextContent(text=text)),
        platform_message_id=platform_message_id,
        reply_to_message_id=reply_to,
        metadata=metadata or {},
    )
    if not inbound:
        message.delivery_status = (
            common_pb2.DELIVERY_STATUS_SENT
            if started["channel"] == WEB
            else common_pb2.DELIVERY_STATUS_QUEUED
        )
    message.create_time.FromDatetime(now)
    return message


def inbound_metadata(text: str, **platform: str) -> dict[str, str]:
    """What the text processor records of an inbound text, with the platform's fields."""
    return {"words": str(len(text.split())), "removed_characters": "0", **platform}


def message_document(message: common_pb2.Message) -> Document:
    """A stored message (repositories/messages.py insert_rows)."""
    text = message.content.text.text
    return {
        "_id": message.id,
        "tenant_id": TENANT,
        "conversation_id": message.conversation_id,
        "sequence": message.sequence,
        "direction": message.direction,
        "channel": message.channel,
        "create_time": message.create_time.ToDatetime(tzinfo=dt.UTC),
        "delivery_status": message.delivery_status,
        "platform_message_id": message.platform_message_id,
        "search_text": text.casefold(),
        "pb": message.SerializeToString(),
    }


def event(conversation_id: str, actor_id: str, now: dt.datetime, **payload: Any) -> Document:
    """One event as the outbox keeps it (events/envelopes.py, repositories/outbox.py)."""
    envelope = events_pb2.EventEnvelope(
        event_id=uuid.uuid4().hex,
        tenant_id=TENANT,
        schema_version=1,
        conversation_id=conversation_id,
        actor_id=actor_id,
        **payload,
    )
    envelope.occur_time.FromDatetime(now)
    kind = envelope.WhichOneof("payload")
    assert kind is not None  # noqa: S101 - every call names one payload
    return {
        "event_id": envelope.event_id,
        "topic": TOPIC_BY_PAYLOAD[kind],
        "key": f"{TENANT}:{conversation_id}".encode(),
        "payload": envelope.SerializeToString(),
    }


def outbox_document(events: Sequence[Document], now: dt.datetime) -> Document:
    """A transaction's events, in one document (repositories/outbox.py add)."""
    return {
        "_id": events[0]["event_id"],
        # Grows within a process, as the service's: the relay publishes in this order.
        "position": ObjectId(),
        "events": list(events),
        "create_time": now,
    }


def ingested_event(channel: int, platform_event_id: str, now: dt.datetime) -> Document:
    """The record that deduplicates a platform's retry (repositories/ingest.py record_many)."""
    key = f"{TENANT}:{channel}:{platform_event_id}"
    return {"_id": key, "tenant_id": TENANT, "ingest_time": now}


def reply_job(message: common_pb2.Message, now: dt.datetime) -> Document:
    """An inbound message waiting for its reply, queued leased to the reply worker of the
    process that stores it, which is handed it after the commit (repositories/ingest.py
    enqueue_many with a leasing): no claim follows."""
    return {
        "_id": uuid.uuid4().hex,
        "tenant_id": TENANT,
        "conversation_id": message.conversation_id,
        "message_id": message.id,
        "sequence": message.sequence,
        "status": "running",
        "attempts": 1,
        "enqueue_time": now,
        "due_time": now + LEASE,
        "owner": OWNER,
    }


def delivery(message: common_pb2.Message, recipient_id: str, now: dt.datetime) -> Document:
    """A reply queued for its platform, leased to the delivery worker of the process that
    stores it, which is handed it after the commit (repositories/deliveries.py enqueue_many
    with a leasing): no claim follows."""
    return {
        "_id": message.id,
        "tenant_id": TENANT,
        "conversation_id": message.conversation_id,
        "sequence": message.sequence,
        "channel": message.channel,
        "recipient_id": recipient_id,
        "service_url": "",
        "state": "sending",
        "attempts": [],
        "budget_start": 0,
        "create_time": now,
        "update_time": now,
        "due_time": now + LEASE,
        "owner": OWNER,
    }


def delivery_sent(platform_message_id: str, now: dt.datetime) -> Document:
    """A delivery's successful attempt and final state (repositories/deliveries.py
    finish_many)."""
    return {
        "$set": {"state": "sent", "update_time": now, "platform_message_id": platform_message_id},
        "$unset": {"owner": "", "due_time": ""},
        "$push": {
            "attempts": {"time": now, "success": True, "platform_message_id": platform_message_id}
        },
    }
