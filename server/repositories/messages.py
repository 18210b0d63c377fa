"""Messages in MongoDB: the serialized contract message plus the fields queries use.

Storing the protobuf bytes means a history page is read without re-encoding each message;
delivery_status, the one field that changes, is kept beside it and overrides the stored copy.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator, Sequence

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.domain.messages import Advance, MessageRow
from server.domain.receipts import FORWARD_FROM, named_by_id
from server.repositories.mongo import MESSAGES, Document, find_by_keys

#: What to_proto reads of a stored message.
_AS_MESSAGE = {"pb": 1, "delivery_status": 1, "platform_message_id": 1}


class MongoMessageRepository:
    """Messages of every tenant, each query scoped to one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[MESSAGES]

    async def insert_rows(self, rows: Sequence[MessageRow], *, tx: AsyncClientSession) -> None:
        """Store messages of any tenants and conversations in one round trip."""
        await self._collection.insert_many(
            [
                {
                    "_id": row.message.id,
                    "tenant_id": row.tenant_id,
                    "conversation_id": row.message.conversation_id,
                    "sequence": row.message.sequence,
                    "direction": row.message.direction,
                    "channel": row.message.channel,
                    "create_time": row.message.create_time.ToDatetime(tzinfo=dt.UTC),
                    "delivery_status": row.message.delivery_status,
                    "platform_message_id": row.message.platform_message_id,
                    "search_text": row.search_text,
                    "pb": row.message.SerializeToString(),
                }
                for row in rows
            ],
            session=tx,
        )

    async def history(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int | None,
        newest_first: bool,
        limit: int,
    ) -> list[common_pb2.Message]:
        """A page of one conversation in sequence order, past ``after_sequence`` in that order."""
        query: Document = {"tenant_id": tenant_id, "conversation_id": conversation_id}
        if after_sequence is not None:
            query["sequence"] = {"$lt" if newest_first else "$gt": after_sequence}
        cursor = self._collection.find(query, _AS_MESSAGE).sort(
            "sequence", DESCENDING if newest_first else ASCENDING
        )
        return [to_proto(document) async for document in cursor.limit(limit)]

    async def all_in_order(
        self, tenant_id: str, conversation_id: str, *, batch_size: int = 500
    ) -> AsyncIterator[common_pb2.Message]:
        """Every message of the conversation by sequence, read in batches (constant memory)."""
        cursor = self._collection.find(
            {"tenant_id": tenant_id, "conversation_id": conversation_id},
            _AS_MESSAGE,
            batch_size=batch_size,
        ).sort("sequence", ASCENDING)
        async for document in cursor:
            yield to_proto(document)

    async def search(
        self,
        tenant_id: str,
        needle: str,
        *,
        conversation_id: str = "",
        channel: int = 0,
        created_from: dt.datetime | None = None,
        created_to: dt.datetime | None = None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Message]:
        """Messages whose text contains ``needle`` (case-folded, matched literally), newest
        first; ``after`` is the (create_time, id) of the last one already seen. Without text
        indexes on the embedded server this scans the tenant's messages in index order."""
        query: Document = {
            "tenant_id": tenant_id,
            # re.escape: the user's query is literal text, never a pattern.
            "search_text": {"$regex": re.escape(needle.casefold())},
        }
        if conversation_id:
            query["conversation_id"] = conversation_id
        if channel:
            query["channel"] = channel
        window: Document = {}
        if created_from is not None:
            window["$gte"] = created_from
        if created_to is not None:
            window["$lt"] = created_to
        if window:
            query["create_time"] = window
        if after is not None:
            created, last_id = after
            query["$or"] = [
                {"create_time": {"$lt": created}},
                {"create_time": created, "_id": {"$lt": last_id}},
            ]
        cursor = self._collection.find(query, _AS_MESSAGE).sort(
            [("create_time", DESCENDING), ("_id", DESCENDING)]
        )
        return [to_proto(document) async for document in cursor.limit(limit)]

    async def get(self, tenant_id: str, message_id: str) -> common_pb2.Message | None:
        """One message of the tenant, or None."""
        document = await self._collection.find_one(
            {"_id": message_id, "tenant_id": tenant_id},
            _AS_MESSAGE,
        )
        return to_proto(document) if document else None

    async def get_many(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], common_pb2.Message]:
        """Messages by (tenant, message id), in one query; those not found are left out."""
        found = await find_by_keys(self._collection, keys, _AS_MESSAGE)
        return {key: to_proto(document) for key, document in found.items()}

    async def known_platform_ids(
        self,
        tenant_id: str,
        channel: int,
        platform_message_ids: Sequence[str],
        *,
        tx: AsyncClientSession | None = None,
    ) -> set[str]:
        """Which of these platform ids name a stored outbound message of the tenant."""
        cursor = self._collection.find(
            {
                "tenant_id": tenant_id,
                "channel": channel,
                "platform_message_id": {"$in": list(platform_message_ids)},
            },
            {"platform_message_id": 1},
            session=tx,
        )
        return {document["platform_message_id"] async for document in cursor}

    async def last_inbound(self, tenant_id: str, conversation_id: str) -> common_pb2.Message | None:
        """The user's latest message in the conversation, or None."""
        cursor = (
            self._collection.find(
                {
                    "tenant_id": tenant_id,
                    "conversation_id": conversation_id,
                    "direction": common_pb2.MESSAGE_DIRECTION_INBOUND,
                },
                _AS_MESSAGE,
            )
            .sort("sequence", DESCENDING)
            .limit(1)
        )
        async for document in cursor:
            return to_proto(document)
        return None

    async def advance_many(
        self, changes: Sequence[Advance], *, tx: AsyncClientSession
    ) -> list[common_pb2.Message]:
        """Move outbound messages (each at most once) to their ``status`` where that is
        forward, and record their platform ids; returns those that moved, as they are now.
        Two round trips whatever their number: the messages, read in the caller's transaction,
        then the updates by ``_id`` and tenant (``_id`` first: point lookups on the embedded
        store); a change committed in between makes an update a write conflict, which retries
        the transaction."""
        ids = [change.message_id for change in changes]
        if len(set(ids)) != len(ids):
            raise ValueError("a message may appear once per call")
        # One $in per field (the embedded store scans for an $or of tenants); each document's
        # tenant is checked against its change below.
        tenants = sorted({change.tenant_id for change in changes})
        cursor = self._collection.find(
            {"_id": {"$in": ids}, "tenant_id": {"$in": tenants}},
            {**_AS_MESSAGE, "tenant_id": 1},
            session=tx,
        )
        current = {document["_id"]: document async for document in cursor}
        moved: list[tuple[str, Document, Document]] = []  # id, $set, the document after
        for change in changes:
            document = current.get(change.message_id)
            if (
                document is not None
                and document.get("tenant_id") == change.tenant_id
                and document.get("delivery_status") in FORWARD_FROM[change.status]
            ):
                update: Document = {"delivery_status": change.status}
                if change.platform_message_id:
                    update["platform_message_id"] = change.platform_message_id
                moved.append((change.message_id, update, {**document, **update}))
        if moved:
            await self._collection.bulk_write(
                [
                    UpdateOne(
                        {"_id": message_id, "tenant_id": after["tenant_id"]}, {"$set": update}
                    )
                    for message_id, update, after in moved
                ],
                ordered=False,
                session=tx,
            )
        return [to_proto(after) for _, _, after in moved]

    async def replace(self, tenant_id: str, message: common_pb2.Message) -> None:
        """Store a message's new content and metadata (its media fetched after it arrived)."""
        await self._collection.update_one(
            {"_id": message.id, "tenant_id": tenant_id},
            {"$set": {"pb": message.SerializeToString()}},
        )

    async def apply_status(
        self,
        tenant_id: str,
        *,
        channel: int,
        status: common_pb2.DeliveryStatus.ValueType,
        platform_message_ids: Sequence[str],
        watermark: tuple[str, dt.datetime] | None,
        conversation_id: str | None = None,
        tx: AsyncClientSession,
    ) -> list[common_pb2.Message]:
        """Move outbound messages to ``status`` where that is forward (see FORWARD_FROM): the
        ones with these platform ids (``named_by_id``: on a channel whose ids are unique within
        a chat only, those in ``conversation_id``, the reporting user's active conversation),
        and with a watermark (conversation id, time) every message of that conversation
        already handed to the platform before the time. Returns the messages that changed, as
        they are now."""
        ids = sorted({platform_id for platform_id in platform_message_ids if platform_id})
        forward = {"delivery_status": {"$in": FORWARD_FROM[status]}}
        outbound: Document = {
            "tenant_id": tenant_id,
            "direction": common_pb2.MESSAGE_DIRECTION_OUTBOUND,
        }
        targets: dict[str, common_pb2.Message] = {}
        if ids:
            # Every message an id names, whatever its status: which conversations they lie in
            # decides which are meant.
            named: dict[str, list[common_pb2.Message]] = {}
            query = {**outbound, "channel": channel, "platform_message_id": {"$in": ids}}
            async for document in self._collection.find(query, _AS_MESSAGE, session=tx):
                message = to_proto(document)
                named.setdefault(message.platform_message_id, []).append(message)
            for group in named.values():
                targets.update((m.id, m) for m in named_by_id(channel, group, conversation_id))
        if watermark is not None:
            watermark_conversation, before = watermark
            query = {
                **outbound,
                "conversation_id": watermark_conversation,
                "create_time": {"$lte": before},
                # Only messages the platform has: a queued one cannot have been read.
                "platform_message_id": {"$gt": ""},
                **forward,
            }
            async for document in self._collection.find(query, _AS_MESSAGE, session=tx):
                message = to_proto(document)
                targets.setdefault(message.id, message)
        changed = sorted(
            (m for m in targets.values() if m.delivery_status in FORWARD_FROM[status]),
            key=lambda m: m.sequence,
        )
        if changed:
            await self._collection.update_many(
                {"_id": {"$in": [m.id for m in changed]}, "tenant_id": tenant_id, **forward},
                {"$set": {"delivery_status": status}},
                session=tx,
            )
        for message in changed:
            message.delivery_status = status
        return changed

    async def by_platform_ids(
        self,
        tenant_id: str,
        channel: int,
        platform_message_ids: Sequence[str],
        *,
        tx: AsyncClientSession,
    ) -> list[common_pb2.Message]:
        """The tenant's messages on the channel with these platform ids, in one read."""
        cursor = self._collection.find(
            {
                "tenant_id": tenant_id,
                "channel": channel,
                "platform_message_id": {"$in": list(platform_message_ids)},
            },
            _AS_MESSAGE,
            session=tx,
        )
        return [to_proto(document) async for document in cursor]

    async def watermarked(
        self, tenant_id: str, conversation_id: str, before: dt.datetime, *, tx: AsyncClientSession
    ) -> list[common_pb2.Message]:
        """The conversation's outbound messages handed to the platform (they have its id)
        up to ``before``: what a watermark covers."""
        cursor = self._collection.find(
            {
                "tenant_id": tenant_id,
                "conversation_id": conversation_id,
                "direction": common_pb2.MESSAGE_DIRECTION_OUTBOUND,
                "create_time": {"$lte": before},
                "platform_message_id": {"$gt": ""},
            },
            _AS_MESSAGE,
            session=tx,
        )
        return [to_proto(document) async for document in cursor]

    async def set_statuses(
        self,
        tenant_id: str,
        statuses: Sequence[tuple[str, common_pb2.DeliveryStatus.ValueType]],
        *,
        tx: AsyncClientSession,
    ) -> None:
        """Set messages' delivery status (message id, status), in one round trip; the caller
        read them in the same transaction, so a change committed since conflicts (and the
        transaction is retried)."""
        if not statuses:
            return
        await self._collection.bulk_write(
            [
                UpdateOne(
                    {"_id": message_id, "tenant_id": tenant_id},
                    {"$set": {"delivery_status": status}},
                )
                for message_id, status in statuses
            ],
            ordered=False,
            session=tx,
        )

    async def mark_read(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        up_to_sequence: int,
        tx: AsyncClientSession,
    ) -> list[common_pb2.Message]:
        """Move sent outbound messages up to the sequence to READ, never backwards (queued,
        FAILED and READ ones stay); returns the messages that changed, as they are now."""
        query: Document = {
            "tenant_id": tenant_id,
            "conversation_id": conversation_id,
            "direction": common_pb2.MESSAGE_DIRECTION_OUTBOUND,
            "sequence": {"$lte": up_to_sequence},
            "delivery_status": {"$in": _READABLE},
        }
        cursor = self._collection.find(query, _AS_MESSAGE, session=tx)
        changed = [to_proto(document) async for document in cursor.sort("sequence", ASCENDING)]
        if changed:
            await self._collection.update_many(
                {**query, "_id": {"$in": [m.id for m in changed]}},
                {"$set": {"delivery_status": common_pb2.DELIVERY_STATUS_READ}},
                session=tx,
            )
        for message in changed:
            message.delivery_status = common_pb2.DELIVERY_STATUS_READ
        return changed

    async def explain_history(self, tenant_id: str, conversation_id: str) -> Document:
        """The query plan of a history page (tests assert it uses the index)."""
        cursor = self._collection.find(
            {"tenant_id": tenant_id, "conversation_id": conversation_id, "sequence": {"$gt": 0}}
        ).sort("sequence", ASCENDING)
        return await cursor.limit(50).explain()


#: The statuses READ moves forward from.
#: A queued message is not on the user's screen yet: it can be read only once sent.
_READABLE = [
    common_pb2.DELIVERY_STATUS_SENT,
    common_pb2.DELIVERY_STATUS_DELIVERED,
]


def to_proto(document: Document) -> common_pb2.Message:
    """The stored message, with its current delivery status."""
    message = common_pb2.Message.FromString(document["pb"])
    message.delivery_status = document.get("delivery_status", message.delivery_status)
    # Set once the platform accepted the message, after the message was stored.
    message.platform_message_id = document.get("platform_message_id") or message.platform_message_id
    return message
