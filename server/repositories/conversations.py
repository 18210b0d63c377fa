"""Conversations in MongoDB. Every method takes the tenant id and filters on it."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.domain.conversations import ConversationFilter, Recording
from server.repositories.mongo import ACTIVE, CLOSED, CONVERSATIONS, Document, update_and_get

_STATUS = {
    ACTIVE: common_pb2.CONVERSATION_STATUS_ACTIVE,
    CLOSED: common_pb2.CONVERSATION_STATUS_CLOSED,
}
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
        """The active conversations of these (channel, user id) pairs that have one, in one
        read."""
        wanted = set(users)
        if not wanted:
            return {}
        cursor = self._collection.find(
            {
                "tenant_id": tenant_id,
                "user_id": {"$in": sorted({user for _, user in wanted})},
                "status": ACTIVE,
            }
        )
        found = {}
        async for document in cursor:
            key = (document["channel"], document["user_id"])
            if key in wanted:
                found[key] = to_proto(document)
        return found

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
        document: Document = {
            "_id": uuid.uuid4().hex,
            "tenant_id": tenant_id,
            "user_id": user_id,
            "channel": channel,
            "status": ACTIVE,
            "channel_conversation_id": channel_conversation_id,
            "message_count": 0,
            "inbound_message_count": 0,
            "outbound_message_count": 0,
            "last_sequence": 0,
            "create_time": now,
            "update_time": now,
            "last_activity_time": now,
            "metadata": {},
        }
        await self._collection.insert_one(document, session=tx)
        return to_proto(document)

    async def record_messages_many(
        self, recordings: Sequence[Recording], *, tx: AsyncClientSession
    ) -> list[common_pb2.Conversation | None]:
        """Reserve sequence numbers for new messages of several conversations (each at most
        once) and update their counters, in three round trips whatever their number: the current
        states, every update in one bulk write, then the new states (the transaction sees its own
        writes; a state's last_sequence is the last number reserved). None for a conversation
        that is not active or not the tenant's. Concurrent writers serialize on the documents.
        A ``service_url`` (Teams, from a verified activity) is kept in the metadata: replies are
        posted there.

        The updates select by ``_id`` alone, which the embedded store serves as a point lookup
        (a filter with more fields costs it index planning per document); the read before them
        checks tenant and status in the same snapshot, and a close committed in between makes
        the update a write conflict, which retries the transaction."""
        ids = [r.conversation_id for r in recordings]
        if len(set(ids)) != len(ids):
            raise ValueError("a conversation may appear once per call")
        current = await self._states(ids, tx)
        active = [
            r
            for r in recordings
            if (document := current.get(r.conversation_id)) is not None
            and document.get("tenant_id") == r.tenant_id
            and document.get("status") == ACTIVE
        ]
        if not active:
            return [None] * len(recordings)
        await self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": r.conversation_id},
                    {
                        "$inc": {
                            "last_sequence": r.inbound + r.outbound,
                            "message_count": r.inbound + r.outbound,
                            "inbound_message_count": r.inbound,
                            "outbound_message_count": r.outbound,
                        },
                        "$set": {"update_time": r.now}
                        | ({"metadata.service_url": r.service_url} if r.service_url else {}),
                        # $max: a slower request committing later must not move activity back.
                        "$max": {"last_activity_time": r.now},
                    },
                )
                for r in active
            ],
            ordered=False,
            session=tx,
        )
        updated = await self._states([r.conversation_id for r in active], tx)
        return [
            to_proto(updated[r.conversation_id]) if r.conversation_id in updated else None
            for r in recordings
        ]

    async def _states(self, ids: Sequence[str], tx: AsyncClientSession) -> dict[str, Document]:
        cursor = self._collection.find({"_id": {"$in": list(ids)}}, session=tx)
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
