"""Conversations in MongoDB. Every method takes the tenant id and filters on it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import DESCENDING, UpdateMany, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from chat.v1 import common_pb2
from server.domain.conversations import (
    ALREADY_ACTIVE,
    ConversationFilter,
    Recording,
    new_conversation,
)
from server.domain.errors import AlreadyExists
from server.repositories.mongo import (
    ACTIVE,
    CLOSED,
    CONVERSATIONS,
    DUPLICATE_KEY_CODE,
    Document,
    alike,
    find_by_keys,
    update_and_get,
)

_STATUS = {
    ACTIVE: common_pb2.CONVERSATION_STATUS_ACTIVE,
    CLOSED: common_pb2.CONVERSATION_STATUS_CLOSED,
}
#: How the store's documents are read (tz_aware, as every client is made): times in UTC.
_AS_STORED: CodecOptions[Document] = CodecOptions(tz_aware=True)
_STATUS_NAME: dict[int, str] = {int(value): name for name, value in _STATUS.items()}


class MongoConversationRepository:
    """Conversations of every tenant, each query scoped to one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[CONVERSATIONS]

    async def get(
        self, tenant_id: str, conversation_id: str, *, tx: AsyncClientSession | None = None
    ) -> common_pb2.Conversation | None:
        """One conversation of the tenant, or None."""
        document = await self._collection.find_one(
            {"_id": conversation_id, "tenant_id": tenant_id}, session=tx
        )
        return to_proto(document) if document else None

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Conversation]:
        """Conversations by (tenant, conversation id), in one query; those not found are
        left out."""
        found = await find_by_keys(self._collection, keys)
        return {key: to_proto(document) for key, document in found.items()}

    async def find_active(
        self, tenant_id: str, user_id: str, channel: int
    ) -> common_pb2.Conversation | None:
        """The user's active conversation on the channel, if any."""
        document = await self._collection.find_one(
            {"tenant_id": tenant_id, "user_id": user_id, "channel": channel, "status": ACTIVE}
        )
        return to_proto(document) if document else None

    async def find_active_many(
        self, tenant_id: str, users: Iterable[tuple[int, str]]
    ) -> dict[tuple[int, str], common_pb2.Conversation]:
        """The active conversations of these (channel, user id) pairs that have one.

        One point read a pair, concurrently: each is served by the one-active-conversation
        index. One read with ``user_id: {$in: ...}`` reads every conversation of the tenant
        on the embedded store (76 ms for 8 users among 3,000 conversations, against 0.5 ms a
        pair), and status webhooks come three to a message."""
        wanted = sorted(set(users))
        found = await asyncio.gather(
            *(self.find_active(tenant_id, user_id, channel) for channel, user_id in wanted)
        )
        return {
            key: conversation
            for key, conversation in zip(wanted, found, strict=True)
            if conversation is not None
        }

    async def insert_active(
        self,
        tenant_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> common_pb2.Conversation:
        """Start a conversation; DuplicateKeyError when the user already has an active one."""
        conversation = new_conversation(
            user_id=user_id,
            channel=channel,
            channel_conversation_id=channel_conversation_id,
            now=now,
        )
        await self._collection.insert_one(to_document(tenant_id, conversation), session=tx)
        return conversation

    async def record_messages_many(
        self, recordings: Sequence[Recording], *, tx: AsyncClientSession
    ) -> list[common_pb2.Conversation | None]:
        """Reserve sequence numbers for new messages of several conversations (each at most
        once) and update their counters, in at most three statements whatever their number:
        the new conversations inserted with their counters, the others' updates in one bulk
        write, then their new states (the transaction sees its own writes; a state's
        last_sequence is the last number reserved). None for a conversation that is not active
        or not the tenant's. Concurrent writers serialize on the documents. A ``service_url``
        (Teams, from a verified activity) is kept in the metadata: replies are posted there.

        Conversations whose counters move alike (the same tenant, numbers of messages and
        service URL: nearly all of a batch) are updated by one statement naming their ids,
        which the embedded store plans once rather than once per conversation. Their
        update_time and last_activity_time are then the latest ``now`` among them, which is
        still no later than the commit that stores their messages (each ``now`` is taken when
        its request began; under load they spread over the time a batch waits, up to a few
        hundred milliseconds). Both times only move forward ($max).

        Every statement names ``_id`` first and then the tenant: the embedded store serves a
        filter that starts with ``_id`` as a point lookup (one that starts with ``tenant_id``
        scans the tenant's index). An update applies only to an active conversation (its
        filter says so), and the read after it tells which were; a close committed after the
        transaction's snapshot makes the update a write conflict, which retries the
        transaction.

        A recording with ``start`` inserts that new conversation, its counters already
        counting the messages (one insert for all of them; no read or update of it). When its
        user has an active conversation on the channel already (another first message started
        it), the unique index fails the whole call with AlreadyExists, reason ALREADY_ACTIVE
        (the group commit then stores the batch item by item)."""
        ids = [r.conversation_id for r in recordings]
        if len(set(ids)) != len(ids):
            raise ValueError("a conversation may appear once per call")
        started = await self._start(recordings, tx)
        existing = [r for r in recordings if r.start is None]
        updated: dict[str, Document] = {}
        if existing:
            await self._collection.bulk_write(
                [_counting(group) for group in alike(existing, _change)], ordered=False, session=tx
            )
            states = await self._states(
                [r.conversation_id for r in existing], {r.tenant_id for r in existing}, tx
            )
            updated = {
                r.conversation_id: document
                for r in existing
                if (document := states.get(r.conversation_id)) is not None
                and document.get("tenant_id") == r.tenant_id
                and document.get("status") == ACTIVE
            }
        return [
            to_proto(started[r.conversation_id])
            if r.conversation_id in started
            else to_proto(updated[r.conversation_id])
            if r.conversation_id in updated
            else None
            for r in recordings
        ]

    async def _start(
        self, recordings: Sequence[Recording], tx: AsyncClientSession
    ) -> dict[str, Document]:
        """Insert the recordings' new conversations with their messages counted, in one
        statement, and return them as stored (by id). No read first: a start that lost to
        another first message (rare) fails the transaction on the unique index, and the group
        commit retries the others without it."""
        documents = [_started(r, r.start) for r in recordings if r.start is not None]
        if not documents:
            return {}
        try:
            await self._collection.insert_many(documents, session=tx)
        except DuplicateKeyError:
            raise _already_active() from None
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if errors and all(error.get("code") == DUPLICATE_KEY_CODE for error in errors):
                raise _already_active() from None
            raise
        # As the store keeps them (times to the millisecond), so this state is the one a
        # later read returns.
        return {
            document["_id"]: bson.decode(bson.encode(document), codec_options=_AS_STORED)
            for document in documents
        }

    async def _states(
        self, ids: Sequence[str], tenants: set[str], tx: AsyncClientSession
    ) -> dict[str, Document]:
        # One $in per field, not an $or of (tenant, ids) branches: the embedded store scans
        # the collection for an $or. Each document's tenant is checked against its recording.
        cursor = self._collection.find(
            {"_id": {"$in": list(ids)}, "tenant_id": {"$in": sorted(tenants)}}, session=tx
        )
        return {document["_id"]: document async for document in cursor}

    async def close(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        reason: str,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> common_pb2.Conversation | None:
        """Close an active conversation; None when it is not active (or not the tenant's)."""
        document = await update_and_get(
            self._collection,
            {"_id": conversation_id, "tenant_id": tenant_id, "status": ACTIVE},
            {
                "$set": {
                    "status": CLOSED,
                    "close_time": now,
                    "close_reason": reason,
                    "update_time": now,
                }
            },
            tx=tx,
        )
        return to_proto(document) if document else None

    async def list(
        self,
        tenant_id: str,
        filters: ConversationFilter,
        *,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Conversation]:
        """Newest first; ``after`` is the (create_time, id) of the last one already seen."""
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if filters.user_id:
            query["user_id"] = filters.user_id
        if filters.channel:
            query["channel"] = filters.channel
        if filters.status:
            query["status"] = _STATUS_NAME[filters.status]
        activity: dict[str, dt.datetime] = {}
        if filters.activity_from is not None:
            activity["$gte"] = filters.activity_from
        if filters.activity_to is not None:
            activity["$lt"] = filters.activity_to
        if activity:
            query["last_activity_time"] = activity
        if after is not None:
            created, last_id = after
            query["$or"] = [
                {"create_time": {"$lt": created}},
                {"create_time": created, "_id": {"$lt": last_id}},
            ]
        cursor = self._collection.find(query).sort(
            [("create_time", DESCENDING), ("_id", DESCENDING)]
        )
        return [to_proto(document) async for document in cursor.limit(limit)]


def _already_active() -> AlreadyExists:
    return AlreadyExists(
        "the user has an active conversation on the channel", reason=ALREADY_ACTIVE
    )


def _started(recording: Recording, start: common_pb2.Conversation) -> Document:
    """A recording's new conversation (``start``) as inserted: its messages counted, as the
    update of an existing one counts them."""
    document = to_document(recording.tenant_id, start)
    count = recording.inbound + recording.outbound
    document.update(
        last_sequence=count,
        message_count=count,
        inbound_message_count=recording.inbound,
        outbound_message_count=recording.outbound,
        update_time=recording.now,
        last_activity_time=max(document["last_activity_time"], recording.now),
    )
    if recording.service_url:
        document["metadata"]["service_url"] = recording.service_url
    return document


def to_document(tenant_id: str, conversation: common_pb2.Conversation) -> Document:
    """A new conversation (no messages yet, not closed) as stored."""
    return {
        "_id": conversation.id,
        "tenant_id": tenant_id,
        "user_id": conversation.user_id,
        "channel": conversation.channel,
        "status": ACTIVE,
        "channel_conversation_id": conversation.channel_conversation_id,
        "message_count": 0,
        "inbound_message_count": 0,
        "outbound_message_count": 0,
        "last_sequence": 0,
        "create_time": conversation.create_time.ToDatetime(tzinfo=dt.UTC),
        "update_time": conversation.update_time.ToDatetime(tzinfo=dt.UTC),
        "last_activity_time": conversation.last_activity_time.ToDatetime(tzinfo=dt.UTC),
        "metadata": dict(conversation.metadata),
    }


def to_proto(document: Document) -> common_pb2.Conversation:
    """The stored document as the contract's Conversation."""
    conversation = common_pb2.Conversation(
        id=document["_id"],
        user_id=document["user_id"],
        channel=document["channel"],
        status=_STATUS[document["status"]],
        channel_conversation_id=document.get("channel_conversation_id", ""),
        message_count=document.get("message_count", 0),
        inbound_message_count=document.get("inbound_message_count", 0),
        outbound_message_count=document.get("outbound_message_count", 0),
        last_sequence=document.get("last_sequence", 0),
        close_reason=document.get("close_reason", ""),
        metadata=document.get("metadata", {}),
    )
    conversation.create_time.FromDatetime(document["create_time"])
    conversation.update_time.FromDatetime(document["update_time"])
    conversation.last_activity_time.FromDatetime(document["last_activity_time"])
    if document.get("close_time") is not None:
        conversation.close_time.FromDatetime(document["close_time"])
    return conversation


def _change(r: Recording) -> tuple[str, int, int, str]:
    """What a recording's statement depends on, beside the ids and the time."""
    return (r.tenant_id, r.inbound, r.outbound, r.service_url)


def _counting(group: Sequence[Recording]) -> UpdateOne | UpdateMany:
    """One statement counting the new messages of a group of alike recordings (their
    conversations' ids named first: the embedded store looks each up by it). It applies only
    to the tenant's active conversations."""
    first = group[0]
    now = max(r.now for r in group)
    change: Document = {
        "$inc": {
            "last_sequence": first.inbound + first.outbound,
            "message_count": first.inbound + first.outbound,
            "inbound_message_count": first.inbound,
            "outbound_message_count": first.outbound,
        },
        **({"$set": {"metadata.service_url": first.service_url}} if first.service_url else {}),
        # $max: a slower request committing later (or one whose batch's latest time was
        # earlier than another's) must not move the times back.
        "$max": {"update_time": now, "last_activity_time": now},
    }
    if len(group) == 1:
        return UpdateOne(
            {"_id": first.conversation_id, "tenant_id": first.tenant_id, "status": ACTIVE}, change
        )
    ids = [r.conversation_id for r in group]
    return UpdateMany({"_id": {"$in": ids}, "tenant_id": first.tenant_id, "status": ACTIVE}, change)
