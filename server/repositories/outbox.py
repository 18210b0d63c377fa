"""The transactional outbox: events are written with the data they describe and published to
Kafka later by the relay (server/relay/relay.py). A published event leaves the outbox (Kafka
keeps it): what is in the outbox is what waits.

The events a transaction writes go in one document, in order (several documents only when they
are large): on the embedded store every document written and removed costs index updates, and a
group-committed batch of calls writes its events once instead of three documents per call."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import events_pb2
from server.events.topics import record_key, topic_for
from server.repositories.mongo import OUTBOX, Document
from server.tracing.spans import trace_fields

#: Every document, except events an earlier version kept after publishing them (marked
#: ``published``): until the start-up migration has removed those, they must not go out again.
_WAITING = {"published": {"$ne": True}}
#: Payload bytes per document, well inside MongoDB's 16 MiB document limit.
MAX_DOCUMENT_PAYLOAD = 4 * 1024 * 1024


class Record(NamedTuple):
    """One event as the relay publishes it."""

    event_id: str
    topic: str
    key: bytes
    payload: bytes
    #: The trace of the call that wrote it (W3C traceparent; "" when not traced).
    trace: str = ""


def records(document: Document) -> list[Record]:
    """The events of an outbox document, in the order they were written. Documents of the
    version before (one event each, its fields at the top) are read too."""
    events = document.get("events")
    if events is None:
        events = [{**document, "event_id": document["_id"]}]
    return [
        Record(
            e["event_id"],
            e["topic"],
            bytes(e["key"]),
            bytes(e["payload"]),
            e.get("traceparent", ""),
        )
        for e in events
    ]


class MongoOutbox:
    """Pending events, in the order they were written."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[OUTBOX]

    async def add(
        self,
        envelopes: Sequence[events_pb2.EventEnvelope],
        *,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> None:
        """Write events inside the caller's transaction. A document's id is its first event's:
        writing an event with a stable id again while it waits fails on the unique ``_id``."""
        documents = [
            {
                "_id": chunk[0]["event_id"],
                # ObjectIds grow within a process; one conversation's events are written in
                # one transaction at a time, so this orders each conversation's events.
                "position": ObjectId(),
                "events": chunk,
                "create_time": now,
            }
            for chunk in _chunks(envelopes)
        ]
        if documents:
            await self._collection.insert_many(documents, session=tx)

    async def pending(self, limit: int) -> list[Document]:
        """The oldest waiting documents (see ``records``)."""
        cursor = self._collection.find(_WAITING).sort("position", ASCENDING)
        return await cursor.limit(limit).to_list()

    async def remove(self, document_ids: Sequence[str]) -> None:
        """These documents' events reached the broker: they wait no more."""
        await self._collection.delete_many({"_id": {"$in": list(document_ids)}})

    async def count_pending(self) -> int:
        """How many events wait for the broker."""
        cursor = self._collection.find(_WAITING, {"events.event_id": True})
        return sum([len(d.get("events", [d])) async for d in cursor])


def _chunks(envelopes: Sequence[events_pb2.EventEnvelope]) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for envelope in envelopes:
        payload = envelope.SerializeToString()
        if chunk and size + len(payload) > MAX_DOCUMENT_PAYLOAD:
            yield chunk
            chunk, size = [], 0
        event = {
            "event_id": envelope.event_id,
            "topic": topic_for(envelope),
            "key": record_key(envelope),
            "payload": payload,
        }
        # Written with the event, so the relay, in whichever process, continues the trace.
        event.update(trace_fields(envelope.tenant_id, envelope.conversation_id))
        chunk.append(event)
        size += len(payload)
    if chunk:
        yield chunk
