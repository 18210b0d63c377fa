"""In-memory queues: deliveries, reply jobs and the ingest inbox with their leases, and the
ingest log."""

# ruff: noqa: ARG002 - the fakes take the Protocols' full signatures and ignore what they need not

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from chat.v1 import common_pb2
from server.domain.errors import AlreadyExists
from server.domain.queues import (
    FAILED,
    QUEUED,
    REPLY_HOLD_AT_MOST,
    SENDING,
    SENT,
    Attempt,
    ClaimedInboxBatch,
    ClaimedReplyJob,
    Delivery,
    Due,
    Finish,
    Leasing,
    Outgoing,
    Position,
    ReplyJob,
    ReportedFailure,
    Waiting,
    held_behind,
)
from tests.support.memory_db import Database

ClaimedT = TypeVar("ClaimedT")


class ClaimsOneByOne(Generic[ClaimedT]):
    """A queue's claim_many as the in-memory queues make it: each item in turn."""

    async def _claim(
        self, item: Due, *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> ClaimedT | None:
        raise NotImplementedError

    async def claim_many(
        self, items: Sequence[Due], *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> list[ClaimedT]:
        claimed = [await self._claim(item, owner=owner, now=now, lease=lease) for item in items]
        return [item for item in claimed if item is not None]


class MemoryDeliveries(ClaimsOneByOne[Delivery]):
    """DeliveryQueue: one record per outbound message keyed by its id, leased by claim."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def all(self) -> list[Delivery]:
        return sorted(self._db.deliveries.values(), key=lambda d: (d.conversation_id, d.sequence))

    def put(self, delivery: Delivery) -> None:
        """Seed or overwrite a record (a test's given state)."""
        self._db.deliveries[delivery.id] = delivery

    async def enqueue(
        self,
        tenant_id: str,
        messages: Sequence[common_pb2.Message],
        *,
        recipient_id: str,
        service_url: str,
        now: dt.datetime,
        tx: Any,
    ) -> None:
        await self.enqueue_many(
            [Outgoing(tenant_id, messages, recipient_id, service_url, now)], tx=tx
        )

    async def enqueue_many(
        self, outgoing: Sequence[Outgoing], *, tx: Any, leasing: Leasing | None = None
    ) -> list[Delivery]:
        self._db.wrote(tx, "deliveries")
        leased: list[Delivery] = []
        for item in outgoing:
            for message in item.messages:
                if message.id in self._db.deliveries:
                    raise AlreadyExists("the message is queued already", reason="DUPLICATE_KEY")
                self._db.deliveries[message.id] = queued = Delivery(
                    id=message.id,
                    tenant_id=item.tenant_id,
                    conversation_id=message.conversation_id,
                    sequence=message.sequence,
                    channel=message.channel,
                    recipient_id=item.recipient_id,
                    service_url=item.service_url,
                    state=QUEUED,
                    attempts=(),
                    create_time=item.now,
                    update_time=item.now,
                    due_time=item.now,
                )
                if leasing is not None and len(item.messages) == 1 and len(leased) < leasing.slots:
                    self._db.deliveries[message.id] = claimed = dataclasses.replace(
                        queued, state=SENDING, owner=leasing.owner, due_time=leasing.until
                    )
                    leased.append(claimed)
        return leased

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]:
        due = [
            d
            for d in self._db.deliveries.values()
            if d.state in (QUEUED, SENDING) and d.due_time is not None and d.due_time <= now
        ]
        ordered = sorted(due, key=lambda d: d.due_time or now)[:limit]
        return [Due(tenant_id=d.tenant_id, id=d.id) for d in ordered]

    async def _claim(
        self, item: Due, *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> Delivery | None:
        delivery_id = item.id
        found = self._db.deliveries.get(delivery_id)
        if (
            found is None
            or found.tenant_id != item.tenant_id
            or found.state not in (QUEUED, SENDING)
            or found.due_time is None
            or found.due_time > now
        ):
            return None
        claimed = dataclasses.replace(found, state=SENDING, owner=owner, due_time=now + lease)
        self._db.deliveries[delivery_id] = claimed
        return claimed

    def _leased(self, delivery: Delivery) -> Delivery | None:
        found = self._db.deliveries.get(delivery.id)
        if found is None or found.owner != delivery.owner or found.state != SENDING:
            return None
        return found

    async def first_waiting_before(self, positions: Sequence[Position]) -> dict[Position, Waiting]:
        found: dict[Position, Waiting] = {}
        for position in positions:
            waiting = sorted(
                (
                    d
                    for d in self._db.deliveries.values()
                    if d.tenant_id == position.tenant_id
                    and d.conversation_id == position.conversation_id
                    and d.sequence < position.sequence
                    and d.state in (QUEUED, SENDING)
                ),
                key=lambda d: d.sequence,
            )
            if waiting:
                found[position] = Waiting(
                    sending=waiting[0].state == SENDING, due_time=waiting[0].due_time
                )
        return found

    async def finish_many(self, finishes: Sequence[Finish], *, tx: Any) -> bool:
        self._db.wrote(tx, "deliveries")
        done = 0
        for f in finishes:
            found = self._leased(f.delivery)
            if found is None:
                continue
            self._db.deliveries[found.id] = dataclasses.replace(
                found,
                state=f.state,
                update_time=f.now,
                platform_message_id=f.platform_message_id,
                owner="",
                due_time=None,
                attempts=(*found.attempts, f.attempt),
            )
            done += 1
        return done == len(finishes)

    async def retry_later(
        self,
        delivery: Delivery,
        attempt: Attempt,
        *,
        due: dt.datetime,
        now: dt.datetime,
        parts_sent: int = 0,
        first_platform_id: str = "",
    ) -> bool:
        found = self._leased(delivery)
        if found is None:
            return False
        self._db.deliveries[found.id] = dataclasses.replace(
            found,
            state=QUEUED,
            due_time=due,
            update_time=now,
            parts_sent=parts_sent,
            first_platform_id=first_platform_id,
            owner="",
            attempts=(*found.attempts, attempt),
        )
        return True

    async def renew(self, delivery: Delivery, *, until: dt.datetime) -> bool:
        found = self._leased(delivery)
        if found is None or found.due_time != delivery.due_time:
            return False
        self._db.deliveries[found.id] = dataclasses.replace(found, due_time=until)
        return True

    async def postpone(self, delivery: Delivery, *, due: dt.datetime) -> None:
        found = self._leased(delivery)
        if found is not None:
            self._db.deliveries[found.id] = dataclasses.replace(
                found, state=QUEUED, due_time=due, owner=""
            )

    async def hold(
        self, tenant_id: str, channel: int, *, recipient_id: str | None, until: dt.datetime
    ) -> int:
        held = 0
        for d in list(self._db.deliveries.values()):
            if (
                d.tenant_id == tenant_id
                and d.channel == channel
                and d.state == QUEUED
                and d.due_time is not None
                and d.due_time < until
                and (recipient_id is None or d.recipient_id == recipient_id)
            ):
                self._db.deliveries[d.id] = dataclasses.replace(d, due_time=until)
                held += 1
        return held

    async def get(self, tenant_id: str, message_id: str) -> Delivery | None:
        found = self._db.deliveries.get(message_id)
        return found if found is not None and found.tenant_id == tenant_id else None

    async def failed_page(
        self,
        tenant_id: str,
        *,
        channel: int,
        updated_from: dt.datetime | None,
        updated_to: dt.datetime | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[Delivery]:
        failed = [
            d
            for d in self._db.deliveries.values()
            if d.tenant_id == tenant_id
            and d.state == FAILED
            and (not channel or d.channel == channel)
            and (updated_from is None or d.update_time >= updated_from)
            and (updated_to is None or d.update_time < updated_to)
            and (after is None or (d.update_time, d.id) < after)
        ]
        return sorted(failed, key=lambda d: (d.update_time, d.id), reverse=True)[:limit]

    async def requeue(
        self, tenant_id: str, message_id: str, *, now: dt.datetime
    ) -> Delivery | None:
        found = await self.get(tenant_id, message_id)
        if found is None or found.state != FAILED:
            return None
        requeued = dataclasses.replace(
            found, state=QUEUED, due_time=now, update_time=now, budget_start=len(found.attempts)
        )
        self._db.deliveries[message_id] = requeued
        return requeued

    async def fail_sent(
        self, tenant_id: str, failures: Sequence[ReportedFailure], *, tx: Any
    ) -> None:
        self._db.wrote(tx, "deliveries")
        for failure in failures:
            found = self._db.deliveries.get(failure.message_id)
            if found is None or found.tenant_id != tenant_id or found.state != SENT:
                continue
            attempt = Attempt(time=failure.time, success=False, error=failure.error)
            self._db.deliveries[failure.message_id] = dataclasses.replace(
                found,
                state=FAILED,
                update_time=failure.time,
                attempts=(*found.attempts, attempt),
            )


class MemoryReplyJobs(ClaimsOneByOne[ClaimedReplyJob]):
    """ReplyJobQueue: jobs claimed with a lease; a claim counts an attempt."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return sorted(self._db.reply_jobs.values(), key=lambda j: j["sequence"])

    def lose_lease(self, job_id: str) -> None:
        """Another process took the job over (its lease lapsed and it claimed it)."""
        self._db.reply_jobs[job_id]["owner"] = "another-process"
        self._db.reply_jobs[job_id]["attempts"] += 1

    async def enqueue_many(
        self, jobs: Sequence[ReplyJob], *, tx: Any, leasing: Leasing | None = None
    ) -> list[ClaimedReplyJob]:
        self._db.wrote(tx, "reply_jobs")
        held = held_behind(jobs)
        leased: list[ClaimedReplyJob] = []
        for index, job in enumerate(jobs):
            job_id = uuid.uuid4().hex
            self._db.reply_jobs[job_id] = found = {
                "id": job_id,
                "tenant_id": job.tenant_id,
                "conversation_id": job.conversation_id,
                "message_id": job.message_id,
                "sequence": job.sequence,
                "status": "pending",
                "attempts": 0,
                "due_time": job.now + REPLY_HOLD_AT_MOST if index in held else job.now,
                "held": index in held,
                "owner": "",
            }
            if index not in held and leasing is not None and len(leased) < leasing.slots:
                found.update(
                    status="running", owner=leasing.owner, attempts=1, due_time=leasing.until
                )
                leased.append(self._as_claimed(found))
        return leased

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]:
        due = [j for j in self._db.reply_jobs.values() if j["due_time"] <= now]
        ordered = sorted(due, key=lambda j: j["due_time"])[:limit]
        return [Due(tenant_id=j["tenant_id"], id=j["id"]) for j in ordered]

    async def _claim(
        self, item: Due, *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> ClaimedReplyJob | None:
        job = self._db.reply_jobs.get(item.id)
        if job is None or job["tenant_id"] != item.tenant_id or job["due_time"] > now:
            return None
        job.update(status="running", owner=owner, due_time=now + lease, held=False)
        job["attempts"] += 1
        return self._as_claimed(job)

    @staticmethod
    def _as_claimed(job: dict[str, Any]) -> ClaimedReplyJob:
        return ClaimedReplyJob(
            id=job["id"],
            tenant_id=job["tenant_id"],
            conversation_id=job["conversation_id"],
            message_id=job["message_id"],
            sequence=job["sequence"],
            attempts=job["attempts"],
            owner=job["owner"],
        )

    def _leased(self, job: ClaimedReplyJob) -> dict[str, Any] | None:
        found = self._db.reply_jobs.get(job.id)
        if found is None or found["owner"] != job.owner or found["attempts"] != job.attempts:
            return None
        return found

    async def earlier_waiting(self, positions: Sequence[Position]) -> dict[Position, bool]:
        return {
            position: True
            for position in positions
            if any(
                j["tenant_id"] == position.tenant_id
                and j["conversation_id"] == position.conversation_id
                and j["sequence"] < position.sequence
                for j in self._db.reply_jobs.values()
            )
        }

    async def complete_many(self, jobs: Sequence[ClaimedReplyJob], *, tx: Any) -> bool:
        self._db.wrote(tx, "reply_jobs")
        leased = [job for job in jobs if self._leased(job) is not None]
        for job in leased:
            del self._db.reply_jobs[job.id]
        return len(leased) == len(jobs)

    async def postpone(
        self, job: ClaimedReplyJob, *, due: dt.datetime, counted: bool = True
    ) -> None:
        found = self._leased(job)
        if found is not None:
            found.update(status="pending", due_time=due, owner="")
            found["attempts"] -= 0 if counted else 1

    async def renew(self, job: ClaimedReplyJob, *, until: dt.datetime) -> bool:
        found = self._leased(job)
        if found is not None:
            found["due_time"] = until
        return found is not None

    async def hold(self, job: ClaimedReplyJob, *, until: dt.datetime) -> None:
        found = self._leased(job)
        await self.postpone(job, due=until, counted=False)
        if found is not None:
            found["held"] = True

    async def wake_next(self, conversations: Sequence[tuple[str, str]], *, now: dt.datetime) -> int:
        woken = 0
        for tenant_id, conversation_id in set(conversations):
            held = [
                j
                for j in self.jobs
                if (j["tenant_id"], j["conversation_id"]) == (tenant_id, conversation_id)
                and j.get("held")
                and j["status"] == "pending"
            ]
            if held:
                held[0].update(due_time=now, held=False)
                woken += 1
        return woken

    async def drop(self, job: ClaimedReplyJob) -> bool:
        found = self._db.reply_jobs.get(job.id)
        if found is None or found["owner"] != job.owner:
            return False
        del self._db.reply_jobs[job.id]
        return True


class MemoryIngestInbox(ClaimsOneByOne[ClaimedInboxBatch]):
    """IngestInbox: batches claimed with a lease, each tenant's in the order stored."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def batches(self) -> list[dict[str, Any]]:
        return sorted(self._db.ingest_inbox.values(), key=lambda b: b["enqueue_time"])

    async def enqueue(self, tenant_id: str, events: bytes, *, count: int, now: dt.datetime) -> None:
        batch_id = uuid.uuid4().hex
        self._db.ingest_inbox[batch_id] = {
            "id": batch_id,
            "tenant_id": tenant_id,
            "events": events,
            "count": count,
            "status": "pending",
            "attempts": 0,
            "enqueue_time": now,
            "due_time": now,
            "owner": "",
        }

    async def waiting(self, tenant_id: str) -> bool:
        return any(
            b["tenant_id"] == tenant_id and b["status"] != "set_aside"
            for b in self._db.ingest_inbox.values()
        )

    async def due(self, *, now: dt.datetime, limit: int) -> list[Due]:
        due = [b for b in self._db.ingest_inbox.values() if b["due_time"] is not None]
        due = [b for b in due if b["due_time"] <= now]
        ordered = sorted(due, key=lambda b: b["due_time"])[:limit]
        return [Due(tenant_id=b["tenant_id"], id=b["id"]) for b in ordered]

    async def _claim(
        self, item: Due, *, owner: str, now: dt.datetime, lease: dt.timedelta
    ) -> ClaimedInboxBatch | None:
        batch = self._db.ingest_inbox.get(item.id)
        if (
            batch is None
            or batch["tenant_id"] != item.tenant_id
            or batch["due_time"] is None
            or batch["due_time"] > now
        ):
            return None
        batch.update(status="running", owner=owner, due_time=now + lease)
        batch["attempts"] += 1
        return ClaimedInboxBatch(
            id=batch["id"],
            tenant_id=batch["tenant_id"],
            events=batch["events"],
            enqueue_time=batch["enqueue_time"],
            attempts=batch["attempts"],
            owner=owner,
        )

    def _leased(self, batch: ClaimedInboxBatch) -> dict[str, Any] | None:
        found = self._db.ingest_inbox.get(batch.id)
        if found is None or found["owner"] != batch.owner or found["attempts"] != batch.attempts:
            return None
        return found

    async def earlier_waiting(self, batch: ClaimedInboxBatch) -> bool:
        return any(
            b["tenant_id"] == batch.tenant_id
            and b["enqueue_time"] < batch.enqueue_time
            and b["status"] != "set_aside"
            for b in self._db.ingest_inbox.values()
        )

    async def complete(self, batch: ClaimedInboxBatch) -> bool:
        if self._leased(batch) is None:
            return False
        del self._db.ingest_inbox[batch.id]
        return True

    async def postpone(
        self, batch: ClaimedInboxBatch, *, due: dt.datetime, counted: bool = True
    ) -> None:
        found = self._leased(batch)
        if found is not None:
            found.update(status="pending", due_time=due, owner="")
            found["attempts"] -= 0 if counted else 1

    async def set_aside(self, batch: ClaimedInboxBatch, *, error: str) -> None:
        found = self._leased(batch)
        if found is not None:
            found.update(status="set_aside", due_time=None, owner="", error=error)


class MemoryIngestLog:
    """IngestLog: an event recorded before fails the recording transaction (unique key)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def seen(self, tenant_id: str, channel: int, platform_event_id: str) -> bool:
        return (tenant_id, channel, platform_event_id) in self._db.ingested

    async def seen_many(
        self, tenant_id: str, events: Sequence[tuple[int, str]]
    ) -> set[tuple[int, str]]:
        return {(c, e) for c, e in events if (tenant_id, c, e) in self._db.ingested}

    async def record(
        self, tenant_id: str, channel: int, platform_event_id: str, *, now: dt.datetime, tx: Any
    ) -> None:
        await self.record_many([(tenant_id, channel, platform_event_id)], now=now, tx=tx)

    async def record_many(
        self, events: Sequence[tuple[str, int, str]], *, now: dt.datetime, tx: Any
    ) -> None:
        self._db.wrote(tx, "ingested")
        for key in events:
            if key in self._db.ingested:
                raise AlreadyExists("the event was ingested before", reason="DUPLICATE_KEY")
            self._db.ingested.add(key)
