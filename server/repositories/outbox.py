"""The transactional outbox: events are written with the data they describe and published to
Kafka later by the relay (server/events/relay.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import events_pb2
from server.events.topics import record_key, topic_for
from server.repositories.mongo import OUTBOX, Document


class MongoOutbox:
    """Pending events, in the order they were written."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[OUTBOX]

    async def add(
        self,
        envelopes: Sequence[events_pb2.EventEnvelope],
        *,
        now: dt.datetime,
        session: AsyncClientSession,
    ) -> None:
        """Write events inside the caller's transaction."""
        if not envelopes:
            return
        await self._collection.insert_many(
            [
                {
                    "_id": envelope.event_id,
                    # ObjectIds grow within a process; one conversation's events are written in
                    # one transaction at a time, so this orders each conversation's events.
                    "position": ObjectId(),
                    "topic": topic_for(envelope),
                    "key": record_key(envelope),
                    "payload": envelope.SerializeToString(),
                    "published": False,
                    "create_time": now,
                }
                for envelope in envelopes
            ],
            session=session,
        )

    async def pending(self, limit: int) -> list[Document]:
        """The oldest unpublished events."""
        cursor = self._collection.find({"published": False}).sort("position", ASCENDING)
        return await cursor.limit(limit).to_list()

    async def mark_published(self, event_ids: Sequence[str], *, now: dt.datetime) -> None:
        """Record that these events reached the broker."""
        await self._collection.update_many(
            {"_id": {"$in": list(event_ids)}},
            {"$set": {"published": True, "publish_time": now}},
        )

    async def count_pending(self) -> int:
        """How many events wait for the broker."""
        return await self._collection.count_documents({"published": False})
