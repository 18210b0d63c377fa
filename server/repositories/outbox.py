"""The transactional outbox: events are written with the data they describe and published to
Kafka later by the relay (server/events/relay.py). A published event leaves the outbox (Kafka
keeps it): what is in the outbox is what waits. Removing is less than half the work of marking
on the embedded store, and keeps the pending query to the waiting events."""

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

#: Every document, except events an earlier version kept after publishing them (marked
#: ``published``): until the start-up migration has removed those, they must not go out again.
_WAITING = {"published": {"$ne": True}}


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
                    "create_time": now,
                }
                for envelope in envelopes
            ],
            session=session,
        )

    async def pending(self, limit: int) -> list[Document]:
        """The oldest waiting events."""
        cursor = self._collection.find(_WAITING).sort("position", ASCENDING)
        return await cursor.limit(limit).to_list()

    async def remove(self, event_ids: Sequence[str]) -> None:
        """These events reached the broker: they wait no more."""
        await self._collection.delete_many({"_id": {"$in": list(event_ids)}})

    async def count_pending(self) -> int:
        """How many events wait for the broker."""
        return await self._collection.count_documents(_WAITING)
