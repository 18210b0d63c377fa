"""What ingestion stores beside messages: the log of platform events already ingested, the
inbox of batches to be applied after the call, and the durable queue of inbound messages
waiting for their reply."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from bson import Binary
from pymongo import DeleteMany, DeleteOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.asynchronous.database import AsyncDatabase

from server.domain.queues import (
    REPLY_HOLD_AT_MOST,
    ClaimedInboxBatch,
    ClaimedReplyJob,
    Due,
    Leasing,
    Position,
    ReplyJob,
    held_behind,
)
from server.repositories.mongo import (
    INGEST_INBOX,
    INGESTED_EVENTS,
    REPLY_JOBS,
    Document,
    alike,
    claim_items,
    due_items,
)
from server.tracing.spans import TRACEPARENT, trace_fields

PENDING = "pending"
RUNNING = "running"
#: An inbox batch given up after repeated failures: kept for an operator, never due again,
#: and no longer holding its tenant's later batches back.
SET_ASIDE = "set_aside"


class MongoIngestLog:
    """Platform events already ingested, per tenant and channel."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[INGESTED_EVENTS]

    @staticmethod
    def _key(tenant_id: str, channel: int, platform_event_id: str) -> str:
        return f"{tenant_id}:{channel}:{platform_event_id}"

    async def seen(self, tenant_id: str, channel: int, platform_event_id: str) -> bool:
        """Whether the event was ingested before."""
        key = self._key(tenant_id, channel, platform_event_id)
        found = await self._collection.find_one({"_id": key, "tenant_id": tenant_id}, {"_id": 1})
        return found is not None

    async def seen_many(
        self, tenant_id: str, events: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        """Which of these (channel, platform event id) were ingested before, in one read."""
        if not events:
            return set()
        keys = {
            self._key(tenant_id, channel, event_id): (channel, event_id)
            for channel, event_id in events
        }
        cursor = self._collection.find(
            {"_id": {"$in": list(keys)}, "tenant_id": tenant_id}, {"_id": 1}
        )
        return {keys[document["_id"]] async for document in cursor}

    async def record(
        self,
        tenant_id: str,
        channel: int,
        platform_event_id: str,
        *,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> None:
        """Record the event in the caller's transaction; a second record fails it."""
        await self.record_many([(tenant_id, channel, platform_event_id)], now=now, tx=tx)

    async def record_many(
        self,
        events: Sequence[tuple[str, int, str]],
        *,
        now: dt.datetime,
        tx: AsyncClientSession,
    ) -> None:
        """Record events (tenant, channel, platform event id) in the caller's transaction, in
        one round trip; one recorded before fails it."""
        await self._collection.insert_many(
            [
                {
                    "_id": self._key(tenant_id, channel, platform_event_id),
                    "tenant_id": tenant_id,
                    "ingest_time": now,
                }
                for tenant_id, channel, platform_event_id in events
            ],
            session=tx,
        )


class MongoReplyJobs:
    """Inbound messages waiting for a reply: enqueued with the message, claimed with a lease,
    removed with the reply (in one transaction each), so a crash loses no reply and stores
    none twice."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[REPLY_JOBS]

    async def enqueue_many(
        self,
        jobs: Sequence[ReplyJob],
        *,
        tx: AsyncClientSession,
        leasing: Leasing | None = None,
    ) -> list[ClaimedReplyJob]:
        """Queue the jobs in the caller's transaction, in one round trip. Of several jobs of
        one conversation, those behind the first are queued held: the first one's completion
        wakes the next (no claim of theirs finds them waiting first). With ``leasing``, the
        first jobs not held (as many as it has slots) are queued leased to its owner, as a
        claim would leave them: those are returned, for the caller to hand over once the
        transaction commits."""
        held = held_behind(jobs)
        slots = leasing.slots if leasing is not None else 0
        documents: list[Document] = []
        leased: list[ClaimedReplyJob] = []
        for index, job in enumerate(jobs):
            document: Document = {
                "_id": uuid.uuid4().hex,
                "tenant_id": job.tenant_id,
                "conversation_id": job.conversation_id,
                "message_id": job.message_id,
                "sequence": job.sequence,
                "status": PENDING,
                "attempts": 0,
                "enqueue_time": job.now,
                "due_time": job.now,
                # The reply continues the trace of the call that stored the message.
                **trace_fields(job.tenant_id, job.conversation_id),
            }
            if index in held:
                document.update(due_time=job.now + REPLY_HOLD_AT_MOST, held=True)
            elif leasing is not None and len(leased) < slots:
                document.update(
                    status=RUNNING, owner=leasing.owner, attempts=1, due_time=leasing.until
                )
                leased.append(_claimed(document))
            documents.append(document)
        await self._collection.insert_many(documents, session=tx)
        return leased

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]:
        """The oldest due jobs (a lapsed lease makes a job due again), of every tenant."""
        return await due_items(self._collection, {"due_time": {"$lte": now}}, limit=limit)

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[ClaimedReplyJob]:
        """The jobs among ``items`` leased to ``owner`` by this claim (those still due)."""
        documents = await claim_items(
            self._collection,
            items,
            due={"due_time": {"$lte": now}},
            update={
                "$set": {"status": RUNNING, "owner": owner, "due_time": now + lease},
                "$unset": {"held": ""},
                "$inc": {"attempts": 1},
            },
        )
        return [_claimed(document) for document in documents]

    async def earlier_waiting(self, positions: Sequence[Position]) -> dict[Position, bool]:
        """For each position, whether an earlier message of its conversation still waits for
        its reply (replies keep the order of the messages, by sequence); positions with none
        are left out. One query per tenant: with the tenant named (not an $in) the embedded
        store reads the conversations' jobs from their index (``_jobs_of``)."""
        found: dict[Position, bool] = {}
        by_tenant: dict[str, list[Position]] = {}
        for position in positions:
            by_tenant.setdefault(position.tenant_id, []).append(position)
        for tenant_id, theirs in by_tenant.items():
            first: dict[str, int] = {}
            async for document in self._jobs_of(tenant_id, {p.conversation_id for p in theirs}):
                conversation = document["conversation_id"]
                first[conversation] = min(document["sequence"], first.get(conversation, 2**62))
            for position in theirs:
                if first.get(position.conversation_id, 2**62) < position.sequence:
                    found[position] = True
        return found

    async def complete_many(
        self, jobs: Sequence[ClaimedReplyJob], *, tx: AsyncClientSession
    ) -> bool:
        """Remove the jobs in the caller's transaction, in one round trip; False when the
        lease of any was lost. Jobs of one tenant, claim and attempt go in one statement naming
        their ids, which the embedded store plans once rather than once per job."""
        removed = await self._collection.bulk_write(
            [_removal(group) for group in alike(jobs, _lease)], ordered=False, session=tx
        )
        return removed.deleted_count == len(jobs)

    async def postpone(
        self, job: ClaimedReplyJob, *, due: dt.datetime, counted: bool = True
    ) -> None:
        """Give the job back, to be claimed again at ``due``; ``counted=False`` when this claim
        was no attempt, so it does not use up the budget."""
        await _give_back(self._collection, job, {"due_time": due}, counted=counted)

    async def renew(self, job: ClaimedReplyJob, *, until: dt.datetime) -> bool:
        """Lease the job to its claim's owner until ``until``; False when that claim no
        longer holds it (its lease lapsed and it was claimed again, counting an attempt)."""
        renewed = await self._collection.update_one(_leased(job), {"$set": {"due_time": until}})
        return renewed.matched_count == 1

    async def hold(self, job: ClaimedReplyJob, *, until: dt.datetime) -> None:
        """Give the job back uncounted, held behind an earlier job of its conversation: not due
        until ``wake_next`` wakes it (when that job is done), or ``until`` passes (a wake lost
        with a process that died)."""
        await _give_back(self._collection, job, {"due_time": until, "held": True}, counted=False)

    def _jobs_of(
        self, tenant_id: str, conversation_ids: set[str], *fields: str
    ) -> AsyncCursor[Document]:
        """The queued jobs of a tenant's conversations: their conversation, sequence and
        ``fields``. The filter names the tenant (not an $in) and the conversations only, which
        the embedded store serves from the conversation index; an $in of tenants, like an $or,
        or any other field in the filter (a job's state), makes it read the whole queue (0.5 s
        among 16,000 jobs, against 3 ms)."""
        return self._collection.find(
            {"tenant_id": tenant_id, "conversation_id": {"$in": sorted(conversation_ids)}},
            dict.fromkeys(("conversation_id", "sequence", *fields), 1),
        )

    async def wake_next(self, conversations: Sequence[tuple[str, str]], *, now: dt.datetime) -> int:
        """Make the earliest held job of each (tenant, conversation) due ``now``; how many. A
        read and an update per tenant (nothing held, no update). Only a job still held and
        pending is woken: a claimed one's due time is its lease. The held and pending ones are
        picked here, not in the read's filter (see ``_jobs_of``)."""
        woken = 0
        by_tenant: dict[str, set[str]] = {}
        for tenant_id, conversation_id in conversations:
            by_tenant.setdefault(tenant_id, set()).add(conversation_id)
        for tenant_id, theirs in by_tenant.items():
            earliest: dict[str, tuple[int, str]] = {}
            async for document in self._jobs_of(tenant_id, theirs, "held", "status"):
                if not document.get("held") or document["status"] != PENDING:
                    continue
                candidate = (document["sequence"], document["_id"])
                conversation = document["conversation_id"]
                earliest[conversation] = min(candidate, earliest.get(conversation, candidate))
            if earliest:
                result = await self._collection.update_many(
                    {
                        "_id": {"$in": sorted(job_id for _, job_id in earliest.values())},
                        "tenant_id": tenant_id,
                        "held": True,
                        "status": PENDING,
                    },
                    {"$set": {"due_time": now}, "$unset": {"held": ""}},
                )
                woken += result.modified_count
        return woken

    async def drop(self, job: ClaimedReplyJob) -> bool:
        """Remove a job that can never be done (its message or conversation is gone); False
        when another process holds it now."""
        removed = await self._collection.delete_one(
            {"_id": job.id, "tenant_id": job.tenant_id, "owner": job.owner}
        )
        return removed.deleted_count == 1


class MongoIngestInbox:
    """Batches of platform events stored whole in one write, then claimed with a lease and
    applied; removed once applied. Applying twice is harmless (the ingest log deduplicates),
    so a crash between applying and removing costs only a second pass."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._collection = database[INGEST_INBOX]

    async def enqueue(self, tenant_id: str, events: bytes, *, count: int, now: dt.datetime) -> None:
        """Store a batch (a serialized IngestEventsRequest of ``count`` events), due now."""
        await self._collection.insert_one(
            {
                "_id": uuid.uuid4().hex,
                "tenant_id": tenant_id,
                "events": Binary(events),
                "count": count,
                "status": PENDING,
                "attempts": 0,
                "enqueue_time": now,
                "due_time": now,
                # Applied later, in the trace of the call that stored it.
                **trace_fields(tenant_id, ""),
            }
        )

    async def waiting(self, tenant_id: str) -> bool:
        """Whether any batch of the tenant waits to be applied (or is being applied)."""
        found = await self._collection.find_one(
            {"tenant_id": tenant_id, "status": {"$ne": SET_ASIDE}}, {"_id": 1}
        )
        return found is not None

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]:
        """The oldest due batches (a lapsed lease makes a batch due again), of every tenant."""
        return await due_items(self._collection, {"due_time": {"$lte": now}}, limit=limit)

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[ClaimedInboxBatch]:
        """The batches among ``items`` leased to ``owner`` by this claim (those still due)."""
        documents = await claim_items(
            self._collection,
            items,
            due={"due_time": {"$lte": now}},
            update={
                "$set": {"status": RUNNING, "owner": owner, "due_time": now + lease},
                "$inc": {"attempts": 1},
            },
        )
        return [
            ClaimedInboxBatch(
                id=document["_id"],
                tenant_id=document["tenant_id"],
                events=bytes(document["events"]),
                enqueue_time=document["enqueue_time"],
                attempts=document["attempts"],
                owner=document["owner"],
                trace=document.get("traceparent", ""),
            )
            for document in documents
        ]

    async def earlier_waiting(self, batch: ClaimedInboxBatch) -> bool:
        """Whether a batch of the same tenant stored before this one still waits."""
        found = await self._collection.find_one(
            {
                "tenant_id": batch.tenant_id,
                "enqueue_time": {"$lt": batch.enqueue_time},
                "status": {"$ne": SET_ASIDE},
            },
            {"_id": 1},
        )
        return found is not None

    async def complete(self, batch: ClaimedInboxBatch) -> bool:
        """Remove the applied batch; False when its lease was lost."""
        removed = await self._collection.delete_one(_leased(batch))
        return removed.deleted_count == 1

    async def postpone(
        self, batch: ClaimedInboxBatch, *, due: dt.datetime, counted: bool = True
    ) -> None:
        """Give the batch back, to be claimed again at ``due``; ``counted=False`` when this
        claim was no attempt (it waited for an earlier batch, or the store was out)."""
        await _give_back(self._collection, batch, {"due_time": due}, counted=counted)

    async def set_aside(self, batch: ClaimedInboxBatch, *, error: str) -> None:
        """Keep a batch that failed every attempt for an operator, never due again."""
        await self._collection.update_one(
            _leased(batch),
            {
                "$set": {"status": SET_ASIDE, "error": error[:1000]},
                "$unset": {"owner": "", "due_time": ""},
            },
        )


async def _give_back(
    collection: AsyncCollection[Document],
    item: ClaimedReplyJob | ClaimedInboxBatch,
    fields: Document,
    *,
    counted: bool,
) -> None:
    """Give a job or batch still leased by this claim back to the queue, pending with
    ``fields`` set; ``counted=False`` gives back the attempt its claim counted."""
    await collection.update_one(
        _leased(item),
        {
            "$set": {"status": PENDING, **fields},
            "$unset": {"owner": ""},
            "$inc": {"attempts": 0 if counted else -1},
        },
    )


def _claimed(document: Document) -> ClaimedReplyJob:
    """A reply job as leased to its owner."""
    return ClaimedReplyJob(
        id=document["_id"],
        tenant_id=document["tenant_id"],
        conversation_id=document["conversation_id"],
        message_id=document["message_id"],
        sequence=document.get("sequence", 0),
        attempts=document["attempts"],
        owner=document["owner"],
        trace=document.get(TRACEPARENT, ""),
    )


def _lease(job: ClaimedReplyJob) -> tuple[str, str, int]:
    """What a job's lease filter shares with others beside its id: tenant, owner, attempt."""
    return (job.tenant_id, job.owner, job.attempts)


def _removal(group: Sequence[ClaimedReplyJob]) -> DeleteOne | DeleteMany:
    """One statement removing a group of jobs still leased by their claims (ids first: the
    embedded store looks each up by it)."""
    if len(group) == 1:
        return DeleteOne(_leased(group[0]))
    # The same filter as each job's (_id stays first), naming all their ids.
    return DeleteMany({**_leased(group[0]), "_id": {"$in": [job.id for job in group]}})


def _leased(item: ClaimedReplyJob | ClaimedInboxBatch) -> Document:
    """The filter of a job or batch still leased by this claim."""
    return {
        "_id": item.id,
        "tenant_id": item.tenant_id,
        "owner": item.owner,
        "attempts": item.attempts,
    }
