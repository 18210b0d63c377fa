"""The audit log: append-only, one hash chain per tenant.

Each entry's hash covers its fields and the previous entry's hash; a head record per tenant
holds the last sequence and hash, written in the same transaction. A changed entry breaks its
own hash, a removed one leaves a gap, and a truncated tail disagrees with the head.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import audit_service_pb2
from server.repositories.mongo import AUDIT_HEADS, AUDIT_LOG, Document

GENESIS_HASH = "0" * 64


class AuditChainMovedError(Exception):
    """Another writer appended to the tenant's chain meanwhile: retry."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What an entry says, before it is chained."""

    occur_time: dt.datetime
    actor_id: str
    action: str
    resource_type: str
    resource_id: str
    detail: str
    event_id: str


def entry_hash(tenant_id: str, sequence: int, record: AuditRecord, previous_hash: str) -> str:
    """Hex SHA-256 over the entry's canonical JSON form."""
    moment = record.occur_time
    moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    fields = [
        tenant_id,
        sequence,
        moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        record.actor_id,
        record.action,
        record.resource_type,
        record.resource_id,
        record.detail,
        record.event_id,
        previous_hash,
    ]
    canonical = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class MongoAuditLog:
    """Audit entries of every tenant; each call names one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._entries = database[AUDIT_LOG]
        self._heads = database[AUDIT_HEADS]

    async def append(self, tenant_id: str, record: AuditRecord, *, tx: AsyncClientSession) -> int:
        """Chain the record after the tenant's last entry; returns its sequence."""
        # MongoDB keeps dates to the millisecond: the hash is computed on what is stored.
        moment = record.occur_time
        record = replace(
            record, occur_time=moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        )
        head = await self._heads.find_one({"_id": tenant_id, "tenant_id": tenant_id}, session=tx)
        sequence = (head["sequence"] if head else 0) + 1
        previous = head["hash"] if head else GENESIS_HASH
        digest = entry_hash(tenant_id, sequence, record, previous)
        moved = await self._heads.update_one(
            {"_id": tenant_id, "tenant_id": tenant_id, "sequence": sequence - 1},
            {"$set": {"sequence": sequence, "hash": digest}},
            upsert=head is None,
            session=tx,
        )
        if moved.matched_count == 0 and moved.upserted_id is None:
            raise AuditChainMovedError(tenant_id)
        await self._entries.insert_one(
            {
                "tenant_id": tenant_id,
                "sequence": sequence,
                "occur_time": record.occur_time,
                "actor_id": record.actor_id,
                "action": record.action,
                "resource_type": record.resource_type,
                "resource_id": record.resource_id,
                "detail": record.detail,
                "event_id": record.event_id,
                "previous_hash": previous,
                "hash": digest,
            },
            session=tx,
        )
        return sequence

    async def page(
        self,
        tenant_id: str,
        *,
        actor_id: str,
        resource_id: str,
        action: str,
        before_sequence: int | None,
        limit: int,
    ) -> list[audit_service_pb2.AuditEntry]:
        """Entries newest first, filtered."""
        query: Document = {"tenant_id": tenant_id}
        for name, value in (("actor_id", actor_id), ("resource_id", resource_id)):
            if value:
                query[name] = value
        if action:
            query["action"] = action
        if before_sequence is not None:
            query["sequence"] = {"$lt": before_sequence}
        cursor = self._entries.find(query).sort("sequence", DESCENDING).limit(limit)
        return [to_proto(document) async for document in cursor]

    async def in_order(self, tenant_id: str, *, up_to: int) -> AsyncIterator[Document]:
        """The tenant's entries with sequence <= ``up_to``, by sequence (batched)."""
        cursor = self._entries.find(
            {"tenant_id": tenant_id, "sequence": {"$lte": up_to}}, batch_size=1000
        ).sort("sequence", ASCENDING)
        async for document in cursor:
            yield document

    async def head(self, tenant_id: str) -> Document | None:
        """The tenant's head record (last sequence and hash), if any."""
        return await self._heads.find_one({"_id": tenant_id, "tenant_id": tenant_id})


def record_of(document: Document) -> AuditRecord:
    """The record a stored entry says it is."""
    return AuditRecord(
        occur_time=document["occur_time"].replace(tzinfo=dt.UTC),
        actor_id=document["actor_id"],
        action=document["action"],
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        detail=document["detail"],
        event_id=document["event_id"],
    )


def to_proto(document: Document) -> audit_service_pb2.AuditEntry:
    entry = audit_service_pb2.AuditEntry(
        sequence=document["sequence"],
        actor_id=document["actor_id"],
        action=document["action"],
        resource_type=document["resource_type"],
        resource_id=document["resource_id"],
        detail=document["detail"],
        event_id=document["event_id"],
        previous_hash=document["previous_hash"],
        hash=document["hash"],
    )
    entry.occur_time.FromDatetime(document["occur_time"])
    return entry
